"""Render the module's panel offscreen to Resources/Screenshots/LKMSegment-panel.png.

The panel is the module's real widget (LKMSegment.py, its .ui) set up on a scene holding the
sample CT, with the bundled default model; Qt is PyQt5 (offscreen) and the ctk/qMRML widgets are
the stand-ins of slicer_app_standin.py, so the picture shows the module's layout and texts, not
Slicer's exact look. Run from the repository root:

    QT_QPA_PLATFORM=offscreen python Testing/slicer_tests/render_panel.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = REPO / "Resources" / "Screenshots" / "LKMSegment-panel.png"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Render the module's panel to a PNG.")
    parser.add_argument("-o", "--output", default=str(OUT))
    out = Path(parser.parse_args(argv).output)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path[:0] = [str(HERE), str(REPO / "LKMSegment"), str(REPO)]
    import pytest
    import SimpleITK as sitk

    import slicer_app_standin as standin
    from lkm_core.inputs.sample_data import fetch_sample_ct
    from slicer_fixtures import add_volume, new_scene
    from widget_driving import import_module_file

    import numpy as np

    scene = new_scene()
    patch = pytest.MonkeyPatch()
    with tempfile.TemporaryDirectory() as settings:
        try:
            standin.install(patch, scene, settings)
            image = sitk.ReadImage(str(fetch_sample_ct().image))
            spacing = image.GetSpacing()
            add_volume(scene, "Abdomen CT", sitk.GetArrayFromImage(image).astype(np.int16),
                       np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]))
            module = import_module_file()
            widget = module.LKMSegmentWidget()
            widget.setup()
            ui = {name: standin.unwrap(w) for name, w in vars(widget.ui).items()}
            # a subset of the structures, so that the list reads as the user's choice
            ui["structuresSubsetRadio"].setChecked(True)
            for i in range(ui["structuresList"].count()):
                item = ui["structuresList"].item(i)
                if item.text() in ("gallbladder", "aorta", "inferior_vena_cava"):
                    item.setCheckState(0)
            # the bundled model's folder as installed, not this checkout's path
            details = ui["modelDetailsLabel"]
            details.setText(details.text().replace(str(REPO), "…/qt-scripted-modules"))
            ui["statusLabel"].setText("Ready: the result arrives as a new segmentation, for review "
                                      "in Segment Editor.")
            ui["advancedCollapsibleButton"].setCollapsed(False)
            panel = widget.parent.widget
            panel.resize(460, 10)
            panel.show()
            app = standin.ensure_application()
            app.processEvents()
            panel.resize(460, panel.sizeHint().height())
            app.processEvents()
            out.parent.mkdir(parents=True, exist_ok=True)
            if not panel.grab().save(str(out)):
                raise SystemExit(f"could not write {out}")
            widget.cleanup()
        finally:
            patch.undo()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
