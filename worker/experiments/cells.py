"""The labeled cells both experiment protocols read (per_budget: `xal simulate`, curve: `xal
simulate --curve`, and `xal pretrain`) and how they split them. No database.

`read_labeled_folder` is the one reader of a labeled folder outside a project: it goes through the
import code (backend.core.readers.files_from_folder), so the experiments understand exactly the
layouts an import does. `split_by_hash` is the split no seed changes (the curve protocol's, and
bench/pretext_probe.py's); the per-budget protocol's seeded split is its own (per_budget.split_cells)."""

import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from backend.core.blobs import BlobStore
from backend.core.errors import Invalid
from backend.core.readers import files_from_folder
from worker.ml.training import stratified_holdout
from worker.rounds import RoundInputs

CHANNEL = "luminance"  # of cells read from a folder outside any project (a project's default too)


@dataclass
class LabeledCells:
    hashes: list[str]  # blob keys of the cell images
    labels: np.ndarray  # (N,) int, positions in class_names
    class_names: list[str]

    def subset(self, indices) -> "LabeledCells":
        indices = np.asarray(indices, dtype=np.int64)
        return LabeledCells([self.hashes[i] for i in indices], self.labels[indices], self.class_names)

    def positions(self, names: Collection[str]) -> list[int]:
        """The positions of the classes `names` (any case); Invalid for a name that is not a class."""
        lookup = {name.casefold(): i for i, name in enumerate(self.class_names)}
        unknown = sorted(name for name in names if name.casefold() not in lookup)
        if unknown:
            raise Invalid(f"no class {', '.join(unknown)} here; the classes are {', '.join(self.class_names)}")
        return [lookup[name.casefold()] for name in names]

    def excluding(self, names: Collection[str]) -> "LabeledCells":
        """Without the cells of the classes `names`, the remaining classes renumbered in order."""
        dropped = self.positions(names)
        kept = [i for i in range(len(self.class_names)) if i not in dropped]
        subset = self.subset(np.flatnonzero(np.isin(self.labels, kept)))
        renumbered = np.searchsorted(kept, subset.labels)
        return LabeledCells(subset.hashes, renumbered.astype(np.int64), [self.class_names[i] for i in kept])


def read_labeled_folder(folder: Path, labels_csv: Path | None, store: BlobStore) -> LabeledCells:
    """Every cell of the folder into `store`, with its class; classes in sorted order.

    Each cell needs a class (the ground truth is the oracle); a cell whose bytes appear
    twice counts once, as an import would keep it once."""
    files = files_from_folder(folder, labels_csv)
    hashes, names, unlabeled = [], [], []
    seen = set()
    for file in tqdm(files, total=len(files), unit="cell", file=sys.stderr, desc=f"reading {folder}"):
        if not file.reference_class:
            unlabeled.append(file.filename)
            continue
        key = store.put(file.data)
        if key not in seen:
            seen.add(key)
            hashes.append(key)
            names.append(file.reference_class)
    if unlabeled:
        raise Invalid(f"{len(unlabeled)} cells of {folder} have no class (e.g. {unlabeled[0]}); every cell needs one here")
    class_names = sorted(set(names))
    if len(class_names) < 2:
        raise Invalid(f"{folder} has {len(class_names)} class; a classifier needs at least 2")
    labels = np.array([class_names.index(name) for name in names], dtype=np.int64)
    return LabeledCells(hashes, labels, class_names)


def stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `size` items (all when there are fewer), each class in proportion."""
    if size >= len(labels):
        return np.arange(len(labels))
    return stratified_holdout(labels, size / len(labels), rng)[1]


@dataclass
class Split:
    pool: np.ndarray  # indices into the cells
    test: np.ndarray
    pretrain: np.ndarray
    validation: np.ndarray | None = None  # fixed early-stopping cells shared by every case (else a holdout of the labels)

    @property
    def sizes(self) -> dict:
        sizes = {"pool": len(self.pool), "test": len(self.test), "pretrain": len(self.pretrain)}
        return sizes if self.validation is None else {**sizes, "validation": len(self.validation)}


def split_by_hash(cells: LabeledCells, test_fraction: float, validation_fraction: float) -> Split:
    """A split that no seed changes: within each class the cells ordered by their content hash,
    the first `test_fraction` the test split, the next `validation_fraction` the validation
    set, the rest the pool (held in Split.pretrain's place: `validation`)."""
    test, validation = [], []
    for c in range(len(cells.class_names)):
        members = sorted(np.flatnonzero(cells.labels == c), key=lambda i: cells.hashes[i])
        n_test, n_validation = round(test_fraction * len(members)), round(validation_fraction * len(members))
        test += members[:n_test]
        validation += members[n_test : n_test + n_validation]
    held = set(test) | set(validation)
    pool = [i for i in range(len(cells.labels)) if i not in held]
    return Split(
        np.array(pool, dtype=np.int64),
        np.sort(np.array(test, dtype=np.int64)),
        np.zeros(0, dtype=np.int64),
        np.sort(np.array(validation, dtype=np.int64)),
    )


def oracle_round(
    cells: LabeledCells,
    number: int,
    strategy: str,
    options: dict,
    model_settings: dict,
    batch_size: int,
    parent: str | None,
    transfer: bool,
    labeled: list[int],
    unlabeled: list[int],
    test: LabeledCells,
    **extra,
) -> RoundInputs:
    """The inputs of one round of a simulated project, whose annotator is the ground truth of
    `cells` (`labeled`, `unlabeled`: indices into them); `extra`: further RoundInputs fields.
    Both are taken in index order, as a project reads its cells in the order of their image ids:
    cells imported in index order make the project and its simulation train and rank alike."""
    labeled, unlabeled = sorted(labeled), sorted(unlabeled)
    return RoundInputs(
        project_id=0,
        number=number,
        channel=CHANNEL,
        class_names=cells.class_names,
        strategy=strategy,
        strategy_options=options,
        model_settings=model_settings,
        batch_size=batch_size,
        parent_model_id=None,
        parent_checkpoint=parent,
        transfer=transfer,
        labeled_ids=list(labeled),
        labeled_hashes=[cells.hashes[i] for i in labeled],
        labeled_classes=cells.labels[labeled],
        pool_ids=unlabeled,
        pool_hashes=[cells.hashes[i] for i in unlabeled],
        test_hashes=test.hashes,
        test_classes=test.labels,
        render_maps=False,
        **extra,
    )
