"""The one contract between the Slicer module and the engine (lkm_core/contract.py).

A bundle the module accepts is a bundle the engine runs: every accepted terminology form is
written by the engine's real .seg.nrrd writer (read back with slicerio), an unusable one is
refused at load by both sides with the same message; both sides weigh the progress phases
alike and name cases alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from engine_helpers import make_bundle, run_cli
from lkm_core import contract
from lkm_core.terminology import slicer_terminology_string
from lkm_core.bundle import load_bundle
from lkm_core.errors import ModelError
from lkm_core.inputs.images import case_name
from lkm_core.outputs.labels import write_seg_nrrd
from lkm_core.batch.progress import BarReporter
import slicer_fixtures  # noqa: F401  (puts LKMSegment/ on sys.path)

from LKMSegmentLib.models import ModelBundleError, read_model_info  # noqa: E402
from LKMSegmentLib.protocol import ProgressTracker, ProtocolParser  # noqa: E402
from LKMSegmentLib.engine import EngineJob, PredictOptions, safe_case_name  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LIVER = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
RIGHT_KIDNEY = ("Segmentation category and type - 3D Slicer General Anatomy list~"
                "SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^24028007^Right~"
                "Anatomic codes - DICOM master list~^^~^^")

# every form a bundle may use, and the TerminologyEntry the engine must write for it
ACCEPTED = {
    "slicer string": (LIVER, LIVER),
    "SCT^code^meaning": ("SCT^10200004^Liver", LIVER),
    "bare SNOMED code": ("10200004", LIVER.replace("^Liver~", "^liver~")),  # meaning: the name
    "dict of codes": ({"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                       "type": {"scheme": "SCT", "code": "64033007", "meaning": "Kidney"},
                       "modifier": {"scheme": "SCT", "code": "24028007", "meaning": "Right"}}, RIGHT_KIDNEY),
    "dict, DICOM keys, no category": ({"type": {"CodingSchemeDesignator": "SCT", "CodeValue": "10200004",
                                                "CodeMeaning": "Liver"}}, LIVER),
    "dict of triples": ({"type": "SCT^64033007^Kidney", "modifier": "SCT^24028007^Right"}, RIGHT_KIDNEY),
}
REFUSED = {
    "a word": "liver",
    "two fields": "SCT^10200004",
    "a number": 10200004,
    "short slicer string": "ctx~SCT^1^a~SCT^2^b",
    "type without code": {"type": {"scheme": "SCT", "meaning": "Liver"}},
    "field with ~": {"type": {"scheme": "SCT", "code": "10200004", "meaning": "Li~ver"}},
    "unknown key": {"type": "SCT^10200004^Liver", "colour": "red"},
}


def test_contract_imports_without_numpy_torch_or_simpleitk():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('numpy', 'torch', 'SimpleITK'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        from lkm_core import contract, terminology
        records = contract.label_records(contract.read_model_json(sys.argv[1]), 'default')
        print(len(records), records[0].slicer_terminology)
    """)
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "lkm_core/models/default")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("9 ") and "~SCT^" in result.stdout


def _bundle_with_terminology(folder: Path, terminology):
    make_bundle(folder, labels=("liver",))
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    meta["labels"][0]["terminology"] = terminology
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.mark.parametrize("form", list(ACCEPTED))
def test_every_accepted_terminology_form_is_written_by_the_engine_as_slicer_reads_it(form, tmp_path):
    terminology, expected = ACCEPTED[form]
    folder = _bundle_with_terminology(tmp_path / "bundle", terminology)
    bundle = load_bundle(folder)
    labels = sitk.GetImageFromArray(np.pad(np.ones((2, 3, 4), np.uint8), 1))
    out = write_seg_nrrd(labels, bundle.labels, tmp_path / "case.seg.nrrd")
    segment = slicerio.read_segmentation(str(out))["segments"][0]
    assert segment["name"] == "liver" and segment["labelValue"] == 1
    fields = expected.split("~")  # slicerio parses the entry as Slicer does
    assert segment["terminology"]["category"] == fields[1].split("^")
    assert segment["terminology"]["type"] == fields[2].split("^")
    if fields[3] != "^^":
        assert segment["terminology"]["typeModifier"] == fields[3].split("^")
    # the module puts the very same string on the segments it imports
    info = read_model_info(folder)
    assert info.labels[0].slicer_terminology == expected
    assert slicer_terminology_string(bundle.labels[0].terminology) == expected
    assert out.read_bytes().count(expected.encode()) == 1


@pytest.mark.parametrize("form", list(REFUSED))
def test_an_unusable_terminology_is_refused_at_load_by_engine_and_module_alike(form, tmp_path):
    folder = _bundle_with_terminology(tmp_path / "bundle", REFUSED[form])
    with pytest.raises(ModelError) as engine_error:
        load_bundle(folder)
    with pytest.raises(ModelBundleError) as module_error:
        read_model_info(folder)
    message = str(engine_error.value)
    assert "label 'liver'" in message and "terminology" in message and "model.json" in message
    assert str(module_error.value).split(": ", 1)[1] == message.split(": ", 1)[1]
    result = run_cli("bundle", "verify", folder)
    assert result.returncode == contract.EXIT_FAILED
    assert result.stderr.strip().count("\n") == 0 and "terminology of label 'liver'" in result.stderr


def test_label_colours_in_every_form_and_the_table_fallback(tmp_path):
    assert contract.color_to_rgb01("#ff8000") == (1.0, 128 / 255, 0.0)
    assert contract.color_to_rgb01([255, 0, 51]) == (1.0, 0.0, 0.2)
    assert contract.color_to_rgb01([0.1, 0.2, 0.3]) == (0.1, 0.2, 0.3)
    for bad in ("red", [1, 2], [0, 0, 300], "#12345"):
        with pytest.raises(ValueError):
            contract.color_to_rgb01(bad)
    meta = {"labels": [{"value": 1, "name": "spleen"}, {"value": 2, "name": "tumour", "color": "#00ff00"}]}
    spleen, tumour = contract.label_records(meta)
    assert spleen.color != (0.5, 0.5, 0.5) and spleen.terminology["type"]["code"] == "78961009"
    assert tumour.color == (0.0, 1.0, 0.0)
    with pytest.raises(contract.BundleContractError, match="repeats"):
        contract.label_records({"labels": [{"value": 1, "name": "a"}, {"value": 1, "name": "b"}]})


def _far_apart(colors) -> bool:
    return all(contract.color_distance(a, b) >= contract.MIN_COLOR_DISTANCE
               for i, a in enumerate(colors) for b in colors[i + 1:])


def test_every_structure_gets_its_own_colour_in_every_label_set_the_project_ships():
    from lkm_core.bundle import default_bundle_path
    from lkm_core.inputs.sample_data import REFERENCE_LABELS
    from lkm_core.terminology import TABLE, label_entry
    from lkm_core.training.tiny_dataset import DEFAULT_ORGANS

    assert _far_apart([s.color for s in TABLE.values()])  # the table itself: left != right
    shipped = {"default model": json.loads((default_bundle_path() / "model.json").read_text()),
               "tiny dataset": {"labels": [label_entry(v, n) for v, n in
                                           enumerate(DEFAULT_ORGANS, 1)]},
               "sample reference": {"labels": [label_entry(v, n) for v, n in
                                               enumerate(REFERENCE_LABELS, 1)]}}
    for name, meta in shipped.items():
        records = contract.label_records(meta)
        assert _far_apart([r.color for r in records]), name
        if name == "default model":  # the file itself already carries distinct colours
            assert [tuple(lab["color"]) for lab in meta["labels"]] == [r.color for r in records]
    kidneys = {r.name: r.color for r in contract.label_records(shipped["default model"])}
    assert kidneys["kidney_left"] != kidneys["kidney_right"]


def test_colliding_bundle_colours_are_replaced_by_distinct_ones_the_same_way_each_time():
    same = [0.7255, 0.4, 0.3255]  # an old bundle: both kidneys in one colour
    meta = {"labels": [{"value": 1, "name": "kidney_right", "color": same},
                       {"value": 2, "name": "kidney_left", "color": same},
                       {"value": 3, "name": "lesion_a"}, {"value": 4, "name": "lesion_b"},
                       {"value": 5, "name": "lesion_c", "color": "#808080"}]}
    records = contract.label_records(meta)
    assert records[0].color == tuple(same)          # the first keeps the bundle's colour
    assert _far_apart([r.color for r in records])   # unknown names are no longer all grey
    assert [r.color for r in contract.label_records(meta)] == [r.color for r in records]
    # the module reads the same colours as the engine (one function, contract.label_records)
    assert all(0.0 <= c <= 1.0 for r in records for c in r.color)


def test_module_and_engine_weigh_the_phases_alike():
    import io
    tracker, shown = ProgressTracker(["a"]), io.StringIO()
    bar = BarReporter(stream=shown)
    for phase, fraction in (("preprocess", 0.5), ("network", 0.5), ("write", 1.0)):
        (event,) = ProtocolParser().feed(json.dumps(
            {"event": "progress", "case": "a", "phase": phase, "fraction": fraction}) + "\n")
        value = tracker.update(event)
        bar.last = 0.0  # the bar redraws at most every 0.2 s
        bar(event.data)
        assert value == pytest.approx(contract.case_fraction(phase, fraction))
        assert f"{value * 100:3.0f}%" in shown.getvalue().rsplit("\r", 1)[-1]
    assert contract.case_fraction("network", 0.5) == pytest.approx(0.05 + 0.10 + 0.75 / 2)
    assert sum(contract.PHASE_WEIGHTS.values()) == pytest.approx(1.0)


def test_the_engine_names_each_case_as_the_module_named_its_file(tmp_path):
    taken = set()
    for volume in ("CT 1.5 mm", "ct_1_5_mm", "CT.1.5.mm", "Leber (arteriell)", "äöü", "x.seg"):
        case = safe_case_name(volume, taken)
        taken.add(case)
        assert case_name(tmp_path / f"{case}.nrrd") == case
    assert len({c.casefold() for c in taken}) == len(taken)  # one file each on Windows too
    assert safe_case_name("ct", {"CT"}) == "ct_2"
    job = EngineJob(PredictOptions(model="m"), temp_root=str(tmp_path))
    job.input_path("case_1")
    args = job.command()
    assert args[args.index("--format") + 1] in contract.OUTPUT_FORMATS
    assert args[args.index("--cancel-file") + 1] == str(job.workdir / "cancel")
    job.cleanup()
