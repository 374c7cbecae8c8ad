"""What the module's panel shows and enables, decided without Qt.

The widget in LKMSegment.py only copies these decisions to its widgets, so the rules are tested
headless:

- the model list is read once and refreshed only when a model is added or removed (not at each
  update of the panel, which happens on every parameter change);
- the output (and the export) segmentation is remembered per input volume: a new input starts at
  "Create new segmentation" (export: none chosen), a node is used for an input only when the user
  chose it for that input or a run of that input produced it, never the previous input's node;
- what is enabled follows from the volume, the model, the structures and whether a run is going;
- the export list offers the (volume, segmentation) pairs least confident first, those already
  exported in this session last (:func:`~.triage.order_for_export`).

Nodes are referred to by their MRML node ID (strings), so nothing here needs MRML either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .models import ModelInfo
from .triage import order_for_export


class ModelList:
    """The installed models of a :class:`~.models.ModelRegistry`, read once."""

    def __init__(self, registry):
        self.registry = registry
        self._models: list[ModelInfo] | None = None

    @property
    def models(self) -> list[ModelInfo]:
        if self._models is None:
            self.refresh()
        return list(self._models)

    def refresh(self) -> list[ModelInfo]:
        """Read the registry again (every model.json); only after an add or a remove."""
        self._models = self.registry.models()
        return list(self._models)

    def find(self, path) -> ModelInfo | None:
        if not path:
            return None
        wanted = str(path)
        return next((m for m in self.models if str(m.path) == wanted), None)

    def add(self, path, verifier=None) -> ModelInfo:
        """Validate and remember a bundle (raises ModelBundleError), then refresh the list.

        ``verifier(path)``: the engine's check (the registry's own when None)."""
        info = self.registry.add(path) if verifier is None else self.registry.add(path, verifier=verifier)
        self.refresh()
        return self.find(info.path) or info

    def remove(self, path) -> None:
        self.registry.remove(Path(path))
        self.refresh()


class PerVolumeChoice:
    """A node chosen for each input volume, so that a choice never carries over to another one."""

    def __init__(self):
        self._chosen: dict[str, str] = {}
        self._volume: str | None = None

    def follow(self, volume_id: str | None, shown_id: str | None) -> str | None:
        """Call on every panel update with the input volume and the node the selector shows;
        returns the node the selector must show.

        A new input volume brings back what was chosen for it (None: create a new node);
        otherwise the shown node is the user's choice for the current input.
        """
        if volume_id != self._volume:
            self._volume = volume_id
            return self._chosen.get(volume_id) if volume_id else None
        if volume_id:
            self.set(volume_id, shown_id)
        return shown_id

    def set(self, volume_id: str, node_id: str | None) -> None:
        if node_id:
            self._chosen[volume_id] = node_id
        else:
            self._chosen.pop(volume_id, None)

    def chosen(self, volume_id: str | None) -> str | None:
        """The node for this volume, or None (a new node, or none for export)."""
        return self._chosen.get(volume_id) if volume_id else None

    def forget_node(self, node_id: str) -> None:
        """A node left the scene: no volume keeps it as its choice."""
        self._chosen = {v: n for v, n in self._chosen.items() if n != node_id}

    def forget_all(self) -> None:
        """The scene was closed: node IDs mean nothing any more."""
        self._chosen.clear()
        self._volume = None


@dataclass(frozen=True)
class Controls:
    """Which controls are enabled (and whether the progress bar shows)."""

    segment: bool
    stop: bool
    batch: bool
    export: bool
    structures_list: bool
    progress: bool
    tta: bool = False   # test-time augmentation: only for a model trained to be mirrored


def controls(has_volume: bool, model: ModelInfo | None, all_structures: bool,
             chosen_structures: list[str], running: bool, has_export_segmentation: bool,
             dataset_folder: str, stopping: bool = False) -> Controls:
    have_structures = all_structures or bool(chosen_structures)
    folder = str(dataset_folder or "").strip()
    return Controls(
        segment=has_volume and model is not None and have_structures and not running,
        stop=running and not stopping,
        batch=model is not None and have_structures and not running,
        export=(has_volume and model is not None and has_export_segmentation
                and folder not in ("", ".") and not running),
        structures_list=not all_structures and not running,
        progress=running,
        tta=model is not None and bool(model.mirror_axes) and not running)


class PanelState:
    """The panel's decisions for one scene: models, per-volume output and export choices."""

    def __init__(self, registry):
        self.models = ModelList(registry)
        self.output = PerVolumeChoice()
        self.export = PerVolumeChoice()
        self.exported: set[tuple[str, str]] = set()  # (volume ID, segmentation ID) this session

    def follow(self, volume_id, shown_output_id, shown_export_id) -> tuple[str | None, str | None]:
        """The (output, export) nodes the selectors must show for this input volume."""
        return (self.output.follow(volume_id, shown_output_id),
                self.export.follow(volume_id, shown_export_id))

    def adopt(self, volume_id, output_id, export_id) -> None:
        """A parameter node's saved choices (a loaded scene) become that volume's choices."""
        if volume_id:
            self.output.set(volume_id, output_id)
            self.export.set(volume_id, export_id)

    def run_target(self, volume_id: str) -> str | None:
        """The node a Segment of this volume writes into: the one chosen for it, or None (new)."""
        return self.output.chosen(volume_id)

    def run_finished(self, results: dict[str, str]) -> None:
        """``results``: volume ID -> segmentation node ID the run wrote. That node becomes the
        volume's output (a rerun updates it by name) and the one to export for it."""
        for volume_id, node_id in results.items():
            self.output.set(volume_id, node_id)
            self.export.set(volume_id, node_id)

    def export_candidates(self, pairs) -> list:
        """``pairs`` (triage.ReviewPair) in the order the export list offers them."""
        return order_for_export(pairs, self.exported)

    def pick_for_export(self, volume_id: str, segmentation_id: str) -> None:
        """The user picked a pair in the export list: that segmentation becomes the volume's
        export choice (the selectors then follow the volume)."""
        self.export.set(volume_id, segmentation_id)

    def record_export(self, volume_id: str, segmentation_id: str) -> None:
        self.exported.add((volume_id, segmentation_id))

    def node_removed(self, node_id: str) -> None:
        self.output.forget_node(node_id)
        self.export.forget_node(node_id)
        self.exported = {pair for pair in self.exported if node_id not in pair}

    def scene_closed(self) -> None:
        self.output.forget_all()
        self.export.forget_all()
        self.exported.clear()
