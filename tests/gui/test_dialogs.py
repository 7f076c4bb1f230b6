import pytest

from qinspect.gui.calibration_dialog import CalibrationDialog
from qinspect.gui.export_dialog import ExportEncodingsDialog


def test_calibration_dialog_values(qtbot):
    dialog = CalibrationDialog(None, "images/", "tf")
    qtbot.addWidget(dialog)
    dialog.samples.setValue(50)
    dialog.batch.setValue(4)
    dialog.scheme.setCurrentText("percentile")
    dialog.image_size.setText("32x48")
    dialog.mean.setText("0.5,0.5,0.5")
    dialog.std.setText("0.25")
    dialog.channels.setCurrentText("bgr")
    data, options = dialog.values()
    assert data == "images/"
    assert options == {
        "batch_size": 4, "scheme": "percentile", "samples": 50, "image_size": (32, 48),
        "mean": (0.5, 0.5, 0.5), "std": (0.25,), "layout": "NCHW", "channels": "bgr",
    }
    dialog.exact.setChecked(True)
    assert dialog.values()[1]["exact_histograms"] is True


def test_calibration_dialog_rejects_bad_numbers(qtbot):
    dialog = CalibrationDialog(None, "x.npy")
    qtbot.addWidget(dialog)
    dialog.mean.setText("a,b")
    with pytest.raises(ValueError, match="mean and std"):
        dialog.values()
    dialog.mean.setText("")
    dialog.image_size.setText("big")
    with pytest.raises(ValueError, match="size"):
        dialog.values()


def test_export_dialog_values(qtbot):
    dialog = ExportEncodingsDialog(None, "/tmp/x.json")
    qtbot.addWidget(dialog)
    dialog.version.setCurrentText("2.0.0")
    dialog.only_edited.setChecked(True)
    assert dialog.values() == ("/tmp/x.json", "2.0.0", True, False)  # qnn-htp derives biases itself
    on_cpu = ExportEncodingsDialog(None, "/tmp/x.json", "ort-cpu")
    qtbot.addWidget(on_cpu)
    assert on_cpu.values()[3] is True
