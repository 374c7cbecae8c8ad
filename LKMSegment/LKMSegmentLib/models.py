"""Model bundles as the module sees them: read ``model.json`` without importing the engine.

The Slicer process never imports torch, so listing models and showing their details reads the
bundle's JSON directly (a folder or a .zip). Labels, colours and terminology are read by
the engine's own rules (``lkm_core.contract``, standard library only). Validating a bundle before
it is accepted (weights present, sha256 matching) is the engine's job: ``lkm_core bundle
verify`` in a child process with the engine's environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .enginecontract import contract, engine_environment
from .process import BackgroundCommand, SubprocessRunner, python_executable

VERIFY_TIMEOUT_S = 300.0


class ModelBundleError(Exception):
    """A bundle that cannot be used; the message says which file and why."""


color_to_rgb01 = contract.color_to_rgb01  # '#rrggbb', 0-255 or 0-1 -> RGB 0-1


@dataclass
class ModelInfo:
    path: Path
    name: str
    version: str = ""
    description: str = ""
    licence: str = ""
    modality: str = ""
    dimension: str = ""            # "2d" (runs slice by slice) or "3d", from model.json
    labels: list = field(default_factory=list)  # contract.LabelRecord, shared with the engine
    raw: dict = field(default_factory=dict)

    @property
    def mirror_axes(self) -> list:
        """The axes the checkpoint was trained to mirror (model.json's inference.mirror_axes):
        test-time augmentation is offered only where there are some (the engine refuses it
        otherwise: mirroring an axis the model never learnt blends left and right)."""
        return list((self.raw.get("inference") or {}).get("mirror_axes") or [])

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def label_table(self) -> dict[str, int]:
        return {lab.name: lab.value for lab in self.labels}

    @property
    def dimension_text(self) -> str:
        """'2D' or '3D' (what the user sees), '' when model.json does not say."""
        return self.dimension.upper() if self.dimension in ("2d", "3d") else ""

    def list_entry(self) -> str:
        """The model selector's entry: name, version and 2D/3D, e.g. 'abdomen-mr 1.0 (2D)'."""
        text = f"{self.name} {self.version}".strip()
        return f"{text} ({self.dimension_text})" if self.dimension_text else text

    def summary(self) -> str:
        """Multi-line text for the details box of the panel."""
        lines = [f"{self.name} {self.version}".strip()]
        if self.description:
            lines.append(self.description)
        lines.append(f"Modality: {self.modality or 'not stated'}")
        if self.dimension == "2d":
            lines.append("Model: 2D (segments a volume slice by slice; takes single-slice images too)")
        elif self.dimension == "3d":
            lines.append("Model: 3D (segments whole volumes)")
        else:
            lines.append("Model: 2D/3D not stated")
        lines.append(f"Licence: {self.licence or 'not stated'}")
        lines.append(f"Structures ({len(self.labels)}): " + ", ".join(self.label_names))
        lines.append(f"Location: {self.path}")
        return "\n".join(lines)


def read_model_info(path) -> ModelInfo:
    """Parse a bundle's model.json (folder or .zip) into a :class:`ModelInfo`, by the rules the
    engine loads it with (lkm_core.contract): a label whose terminology or colour the engine
    would refuse is refused here too, with the same message."""
    path = Path(path)
    try:
        meta = contract.read_model_json(path)
        records = contract.label_records(meta, f"{path}")
    except contract.BundleContractError as e:
        raise ModelBundleError(str(e)) from None
    return ModelInfo(
        path=path, name=str(meta.get("name", path.stem)), version=str(meta.get("version", "")),
        description=str(meta.get("description", "")),
        licence=str(meta.get("licence", meta.get("license", ""))),
        modality=str(meta.get("modality", "")), dimension=str(meta.get("dimension", "")).lower(),
        labels=records, raw=meta)


def start_verify(path, runner=None, engine_env: dict | None = None, python: str | None = None,
                 timeout_s: float = VERIFY_TIMEOUT_S) -> BackgroundCommand:
    """Start the engine's check of a bundle (``lkm_core bundle verify``) without waiting for it
    (the panel pumps it from a timer); :func:`verify_outcome` reads the answer. Raises
    ModelBundleError at once for a folder or file that is no bundle. The child gets the engine's
    environment (lkm_core on its path) unless ``engine_env`` is given: the extension build and
    a source checkout have no pip-installed lkm_core."""
    read_model_info(path)
    return BackgroundCommand(runner or SubprocessRunner(), python or python_executable(),
                             ["-m", "lkm_core", "bundle", "verify", str(path)],
                             env=engine_env if engine_env is not None else engine_environment(),
                             timeout_s=timeout_s)


def verify_outcome(path, command: BackgroundCommand) -> ModelInfo:
    """The bundle's details once the engine accepted it; ModelBundleError with the engine's
    own message when it refused it (or took too long)."""
    if command.timed_out:
        raise ModelBundleError(f"Checking {path} took longer than {command.timeout_s:.0f} s; try again.")
    if command.exit_code != 0:
        detail = (command.stderr or command.stdout).strip().splitlines()
        raise ModelBundleError(
            f"The model {path} was refused by the engine: "
            f"{detail[-1] if detail else 'exit code %s' % command.exit_code}")
    return read_model_info(path)


def verify_bundle(path, engine_env: dict | None = None, python: str | None = None,
                  timeout_s: float = VERIFY_TIMEOUT_S) -> ModelInfo:
    """Check a bundle with the engine and read its details (blocking: scripts and tests)."""
    return verify_outcome(path, start_verify(path, engine_env=engine_env, python=python,
                                             timeout_s=timeout_s).wait())


class ModelRegistry:
    """Installed models: the bundled default(s) first, then the ones the user added.

    The user's additions are remembered in a small JSON file (a list of paths), so the same
    registry works in the app and in tests.
    """

    def __init__(self, default_dirs: list, store_file):
        self.default_dirs = [Path(d) for d in default_dirs if d]
        self.store_file = Path(store_file)

    def _stored(self) -> list[str]:
        try:
            data = json.loads(self.store_file.read_text(encoding="utf-8"))
            return [str(p) for p in data.get("models", [])]
        except (FileNotFoundError, ValueError):
            return []

    def _save(self, paths: list[str]):
        self.store_file.parent.mkdir(parents=True, exist_ok=True)
        self.store_file.write_text(json.dumps({"models": paths}, indent=2), encoding="utf-8")

    def default_models(self) -> list[Path]:
        found = []
        for d in self.default_dirs:
            if (d / "model.json").is_file():
                found.append(d)
            elif d.is_dir():
                # the bundled default model first, then the others by name
                for child in sorted(d.iterdir(), key=lambda c: (not c.name.startswith("default"), c.name)):
                    if (child / "model.json").is_file() or child.suffix.lower() == ".zip":
                        found.append(child)
        return found

    def models(self) -> list[ModelInfo]:
        """Every readable model, the defaults first; unreadable stored entries are skipped."""
        result, seen = [], set()
        for path in [*self.default_models(), *map(Path, self._stored())]:
            key = os.path.normcase(os.path.abspath(path))
            if key in seen:
                continue
            seen.add(key)
            try:
                result.append(read_model_info(path))
            except ModelBundleError:
                continue
        return result

    def add(self, path, verifier=verify_bundle) -> ModelInfo:
        """Validate a bundle (``verifier`` raises ModelBundleError if bad), then remember it."""
        path = Path(path).resolve()
        info = verifier(path)
        stored = self._stored()
        if str(path) not in stored:
            self._save([*stored, str(path)])
        return info

    def is_bundled(self, path) -> bool:
        wanted = Path(path).resolve()
        return any(p.resolve() == wanted for p in self.default_models())

    def remove(self, path):
        """Forget a model the user added (its files stay). A model that comes with the extension
        cannot be removed: ModelBundleError says so."""
        if self.is_bundled(path):
            raise ModelBundleError(f"'{Path(path).name}' comes with the LKMSegment extension and cannot "
                                   "be removed; only models added with 'Add model…' can.")
        path = str(Path(path).resolve())
        self._save([p for p in self._stored() if p != path])
