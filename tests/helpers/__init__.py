"""Test tooling that is not part of the product (importable as ``helpers`` from any test folder)."""
