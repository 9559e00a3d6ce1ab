"""Talking to a Triton Inference Server, and starting one (the transport layer).

Small modules, lowest first: :mod:`.errors` (typed server errors, mapped from status codes),
:mod:`.address` (addresses, transport options, request headers), :mod:`.keys` (the per-start key
of this process's embedded servers), :mod:`.client` (tritonclient clients, readiness, the
repository index, a served model's config), :mod:`.shm` (system shared-memory regions and their
pool), :mod:`.model` (a served model as a window-engine predictor); the embedded server:
:mod:`.processes` (the child process), :mod:`.workdirs` (its owner-only folder),
:mod:`.repository` (the generated model repository) and :mod:`.embedded`.

Nothing here imports :mod:`clara_napari.core.apps` or a layer above it; tritonclient, gevent and
grpc are imported inside functions.
"""
