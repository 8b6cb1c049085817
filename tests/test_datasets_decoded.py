"""label_dataset on a *decoded* ``Audio()`` column (what ``load_dataset`` gives) and on an
undecoded one, without torchcodec or FFmpeg: the same numbers as predict_file on the same
audio, and the column's feature given back as it was."""

from __future__ import annotations

import importlib.util
import io
import pickle

import numpy as np
import pytest
import soundfile as sf

from agegender_sb import AgeGenderClassifier
from agegender_sb.datasets import label_dataset

datasets = pytest.importorskip("datasets")


def _dataset(encoded, feature):
    features = datasets.Features({"audio": feature, "id": datasets.Value("string")})
    ids = [str(i) for i in range(len(encoded))]
    try:
        ds = datasets.Dataset.from_dict({"audio": encoded, "id": ids})
        return ds.cast_column("audio", feature), {}
    except pickle.PicklingError:
        # As tests/test_datasets.py: datasets 5.2 with pyarrow 24-26 cannot hash an in-memory
        # table here; the same Dataset with its fingerprints given.
        import pyarrow as pa

        table = pa.table({"audio": pa.array(encoded, type=features.arrow_schema.field(
            "audio").type), "id": ids})
        ds = datasets.Dataset(table, info=datasets.DatasetInfo(features=features),
                              fingerprint=f"agegender-decoded-{feature.decode}")
        return ds, {"new_fingerprint": f"agegender-decoded-{feature.decode}-labelled"}


@pytest.mark.parametrize("decode", [True, False])
def test_label_dataset_decoded_and_not(tiny_checkpoint, tmp_path, decode):
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    rng = np.random.default_rng(0)
    rates = [8000, 22050, 16000]
    encoded, paths = [], []
    for i, rate in enumerate(rates):
        x = (0.1 * rng.standard_normal(int(1.2 * rate))).astype(np.float32)
        path = tmp_path / f"{i}.wav"
        sf.write(str(path), x, rate, subtype="FLOAT")
        paths.append(path)
        buf = io.BytesIO()
        sf.write(buf, x, rate, format="WAV", subtype="FLOAT")
        # one example by path only (bytes empty), as Audio(decode=False) of files on disk
        encoded.append({"bytes": None if i == 2 else buf.getvalue(), "path": str(path)})
    feature = datasets.Audio(decode=decode)
    ds, fingerprints = _dataset(encoded, feature)
    if decode and importlib.util.find_spec("torchcodec") is None:
        with pytest.raises(ImportError):  # what the plain labeller meets under map
            ds[0]["audio"]  # noqa: B018
    out = label_dataset(ds, clf, vad=None, batch_size=2, map_kwargs=fingerprints)
    assert out.features["audio"] == feature
    assert out.column_names == ["audio", "id", "age", "gender", "female", "male", "child",
                                "speech", "error"]
    for i, path in enumerate(paths):
        pred = clf.predict_file(path, vad=None)
        row = out.select_columns(["age", "gender", "error"])[i]
        assert row["error"] is None
        assert row["age"] == pytest.approx(float(pred.age[0]), abs=1e-3)
        assert row["gender"] == pred.gender[0]
