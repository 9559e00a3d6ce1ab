"""The fields and layout of the *Triton Inference* widget (a mixin of
:class:`~._widget.TritonInferenceWidget`): the essentials first, then the collapsible *Measurements*
and *Advanced* sections. No behaviour here: the widget connects the fields to the panel model."""
from __future__ import annotations

from collections.abc import Sequence

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
)
from qtpy.QtWidgets import QLineEdit, QStyledItemDelegate
from superqt import QCollapsible

from ._panel import RERUN_CHOICES, SERVER_HELP
from ._panel_model import CONFIG_FILE, PROTOCOLS, PanelState

#: runs the panel on the selected image layer
RUN_KEY = "Control-Shift-I"


class FormMixin:
    """Builds the widget's fields (``self._image``, ``self._app``, ... as the tests and scripts name them)."""

    def _build_form(self, apps: Sequence[str], saved: PanelState) -> None:
        self._image = ComboBox(label="image", choices=self._image_choices, nullable=False)
        self._app = ComboBox(label="app", choices=[*apps, CONFIG_FILE], value=saved.app)
        self._app_file = FileEdit(label="config file", mode="r", filter="*.json", value=saved.app_file)
        self._server = LineEdit(label="server", value=saved.server)
        self._server.tooltip = SERVER_HELP
        self._protocol = ComboBox(label="protocol", choices=list(PROTOCOLS), value=saved.protocol)
        self._headers = LineEdit(label="headers", value="")
        self._headers.native.setEchoMode(QLineEdit.EchoMode.Password)    # tokens are not shown
        self._headers.tooltip = "extra request headers, e.g. 'Authorization=Bearer TOKEN; x-key=value' (not saved)"
        self._ssl_ca = FileEdit(label="TLS CA file", mode="r", value="")
        self._ssl_ca.tooltip = "CA certificate for https:// and grpcs:// servers (optional)"
        self._ssl_cert = FileEdit(label="client cert", mode="r", value="")
        self._ssl_key = FileEdit(label="client key", mode="r", value="")
        self._model_list: list[tuple[str, str]] = []
        self._model = ComboBox(choices=self._model_choices)
        self._refresh = PushButton(text="↻ models")
        self._refresh.tooltip = "read the model list from the server (starts the embedded server if needed)"
        model_row = Container(layout="horizontal", widgets=[self._model, self._refresh], labels=False, label="model")
        model_row.margins = (0, 0, 0, 0)
        self._roi = [SpinBox(min=0, max=2048, step=16, value=0) for _ in range(3)]
        for spin, axis in zip(self._roi, "xyz", strict=True):
            spin.tooltip = f"window size along {axis} in voxels of the model's input (0 = the model's own)"
        roi_row = Container(layout="horizontal", widgets=self._roi, labels=False, label="window x, y, z")
        roi_row.margins = (0, 0, 0, 0)
        self._overlap = FloatSpinBox(label="overlap", min=0.0, max=0.95, step=0.05, value=0.25)
        self._blending = ComboBox(label="blending", choices=["constant", "gaussian"], value="constant")
        self._in_flight = SpinBox(label="requests in flight", min=1, max=64, value=2)
        self._rerun = ComboBox(label="re-run", choices=list(RERUN_CHOICES), value=saved.rerun)
        self._rerun.tooltip = ("what running again on an image with a result does: a new layer (the old one and its edits "
                               "stay) or a replacement that Ctrl+Z undoes")
        self._probabilities = CheckBox(label="probabilities", text="add a foreground-score layer",
                                       value=saved.probabilities)
        self._probabilities.tooltip = "the stitched model output before argmax, on the image's grid (float32: 4 bytes a voxel)"
        self._run = PushButton(text="Run")
        self._run.tooltip = f"run the app on the image ({RUN_KEY.replace('Control', 'Ctrl')} runs it on the selected image layer)"
        self._bar = ProgressBar(label="windows", min=0, max=1, value=0)
        self._status = Label(label="status", value="server not started")
        self._status.native.setWordWrap(True)
        self._export_dir = FileEdit(label="export to", mode="d", value=saved.export_dir)
        self._export = PushButton(text="Export MHD + publish bundle")
        self._export.tooltip = "the labels as MHD, the publish bundle and the measurements as CSV"
        self._reference = ComboBox(label="Dice vs", choices=self._reference_choices, nullable=False)
        self._reference.tooltip = "a reference (ground truth) labels layer on the image's grid"
        self._table = Table(value={name: [] for name in ("label", "name", "voxels", "ml", "dice")})
        self._table.read_only = True
        # the cells as written (magicgui's default delegate shows 1937455 voxels as 1.937e+06)
        self._table.native.setItemDelegate(QStyledItemDelegate(self._table.native))
        self._table.native.verticalHeader().setVisible(False)
        self._table.native.setMaximumHeight(120)
        self._copy = PushButton(text="Copy table")
        self._measure = PushButton(text="↻ measure")
        self._measure.tooltip = "measure the result layer again (after edits)"
        buttons = Container(layout="horizontal", widgets=[self._measure, self._copy], labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.extend([self._image, self._app, self._app_file, self._server, self._run, self._bar, self._status,
                     self._export_dir, self._export])
        # the rest in collapsible sections (superqt), below the essentials
        advanced = Container(labels=True, widgets=[self._protocol, self._headers, self._ssl_ca, self._ssl_cert,
                                                   self._ssl_key, model_row, roi_row, self._overlap, self._blending,
                                                   self._in_flight, self._rerun, self._probabilities])
        table = Container(labels=True, widgets=[self._reference, self._table, buttons])
        self._advanced = QCollapsible("Advanced")
        self._advanced.addWidget(advanced.native)
        self._measurements = QCollapsible("Measurements")
        self._measurements.addWidget(table.native)
        self._sections = (advanced, table)        # keep the magicgui containers alive
        layout = self.native.layout()
        layout.insertWidget(layout.indexOf(self._export_dir.native.parentWidget()), self._measurements)
        layout.insertWidget(layout.indexOf(self._export_dir.native.parentWidget()), self._advanced)
