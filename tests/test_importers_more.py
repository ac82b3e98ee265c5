"""Importers of MoE-Infinity EAM collections, moe-lrc safetensors and the generic long format: hand-made inputs
written here, what they become, and the one-line refusal of each malformation (nothing is ever unpickled)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from simulator.errors import InputError
from tests.helpers import toy_model
from traces.cli import main
from traces.eam import eam_collection_from_trace, eam_collection_metadata, load_eam_collection
from traces.format import TraceFile
from traces.importers import long_format, moe_infinity_eam, moe_lrc

TOY = toy_model(layers=2, experts=8, top_k=2)


def rows_of(path):
    trace = TraceFile(path)
    chunks = list(trace.chunks(extras=True))
    cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
    return trace, {n: cat(n) for n in ("sequence", "token", "layer", "experts")}, chunks


# --- MoE-Infinity EAM -------------------------------------------------------------------------------------------

def test_eam_npy_becomes_a_validated_collection(tmp_path):
    eam = np.arange(3 * 2 * 8, dtype=np.int32).reshape(3, 2, 8) % 5
    np.save(tmp_path / "eamc.npy", eam)
    summary = moe_infinity_eam.import_files([tmp_path / "eamc.npy"], tmp_path / "eamc.parquet", TOY)
    assert (summary.rows, summary.sequences) == (6, 3)
    loaded = load_eam_collection(tmp_path / "eamc.parquet")
    assert loaded.dtype == np.int64 and np.array_equal(loaded, eam)
    assert np.array_equal(load_eam_collection(tmp_path / "eamc.npy", TOY), eam), "a raw .npy loads the same"
    meta = eam_collection_metadata(tmp_path / "eamc.parquet")
    assert meta["model"].experts_per_layer == 8 and meta["provenance"]["files"] == ["eamc.npy"]
    with pytest.raises(InputError, match="required column 'token' is missing"):
        TraceFile(tmp_path / "eamc.parquet")  # a trace reader refuses it


def test_eam_whole_floats_accepted_and_from_trace(tmp_path):
    np.save(tmp_path / "f.npy", np.ones((1, 2, 8), dtype=np.float32))
    moe_infinity_eam.import_files([tmp_path / "f.npy"], tmp_path / "f.parquet", TOY)
    assert load_eam_collection(tmp_path / "f.parquet").sum() == 16
    # A trace's EAMs: sequence 0 has tokens routed [0,1] and [1,2] at layer 0, [3,4] and [-1,-1] at layer 1.
    pd.DataFrame({"sequence": [0, 0, 0, 0, 0, 0, 1, 1], "token": [0, 0, 1, 1, 0, 0, 0, 0],
                  "layer": [0, 0, 0, 0, 1, 1, 0, 0], "expert": [0, 1, 1, 2, 3, 4, 7, 6]}).to_csv(tmp_path / "l.csv", index=False)
    long_format.import_files([tmp_path / "l.csv"], tmp_path / "t.parquet", TOY)
    eam = eam_collection_from_trace(tmp_path / "t.parquet")
    assert eam.shape == (2, 2, 8)
    assert eam[0, 0].tolist() == [1, 2, 1, 0, 0, 0, 0, 0] and eam[0, 1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert eam[1, 0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1] and eam[1, 1].sum() == 0


@pytest.mark.parametrize("array, fragment", [
    (np.zeros((2, 8), dtype=np.int32), "field 'shape': (2, 8) is not [sequences, layers, experts]"),
    (np.zeros((1, 3, 8), dtype=np.int32), "field 'shape': (1, 3, 8) does not match toy"),
    (np.full((1, 2, 8), -1, dtype=np.int32), "field 'counts[0, 0, 0]': -1 is negative"),
    (np.full((1, 2, 8), 0.5), "field 'counts[0, 0, 0]': 0.5 is not a whole number"),
    (np.zeros((0, 2, 8), dtype=np.int32), "holds no sequences"),
    (np.array([[["a"] * 8] * 2]), "is not a numeric count type"),
])
def test_eam_malformed_arrays(tmp_path, array, fragment):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputError) as err:
        moe_infinity_eam.import_files([tmp_path / "bad.npy"], tmp_path / "o.parquet", TOY)
    assert fragment in str(err.value) and "bad.npy" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o.parquet").exists()


class Boom:
    def __reduce__(self):
        return (open, ("/tmp/never-created-by-moe-offload-sim", "w"))


def test_eam_never_unpickles(tmp_path):
    obj = np.empty((1, 2, 8), dtype=object)
    obj[0, 0, 0] = Boom()
    np.save(tmp_path / "evil.npy", obj, allow_pickle=True)
    with pytest.raises(InputError, match="evil.npy: npy: Object arrays cannot be loaded"):
        moe_infinity_eam.import_files([tmp_path / "evil.npy"], tmp_path / "o.parquet", TOY)
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps(np.zeros((1, 2, 8))))
    with pytest.raises(InputError, match="pickle.npy: not a .npy or Parquet EAM collection"):
        load_eam_collection(tmp_path / "pickle.npy")


# --- moe-lrc safetensors ----------------------------------------------------------------------------------------

def save_safetensors(path, tensors):
    from safetensors.numpy import save_file  # the reference writer (test dependency only)
    save_file(tensors, str(path))


def lrc_layers(tmp_path, n=3, T=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((2, n, T, 8)), axis=-1)[..., :2].astype(np.int8)  # [layer, seq, token, k] distinct
    for layer in range(2):
        save_safetensors(tmp_path / f"toy_{layer:02d}.safetensors", {"wiki": ids[layer], "code": ids[layer][:1]})
    return ids


def test_moe_lrc_layers_and_datasets(tmp_path):
    ids = lrc_layers(tmp_path)
    summary = moe_lrc.import_files([tmp_path], tmp_path / "t.parquet", TOY)
    trace, rows, _ = rows_of(tmp_path / "t.parquet")
    # data sets in sorted order: "code" (1 sequence) is sequence 0, "wiki" (3 sequences) 1..3
    assert (summary.sequences, summary.tokens, summary.rows) == (4, 16, 32)
    assert trace.meta.provenance["datasets"] == {"code": [0, 1], "wiki": [1, 4]}
    grid = rows["experts"].reshape(4, 4, 2, 2)  # [sequence, token, layer, k]
    assert np.array_equal(grid[1:], ids.transpose(1, 2, 0, 3)), "router order and (token, layer) placement kept"
    assert np.array_equal(grid[0], ids[:, 0].transpose(1, 0, 2))
    assert trace.meta.moe_layer_ids == [0, 1]


def test_moe_lrc_malformed(tmp_path):
    ids = lrc_layers(tmp_path)

    def refused(fragment):
        with pytest.raises(InputError) as err:
            moe_lrc.import_files([tmp_path], tmp_path / "o.parquet", TOY)
        assert fragment in str(err.value) and "\n" not in str(err.value)

    bad = ids[1].copy()
    bad[2, 3, 1] = 9
    save_safetensors(tmp_path / "toy_01.safetensors", {"wiki": bad, "code": bad[:1]})
    refused("toy_01.safetensors: tensor 'wiki': value at [2, 3, 1]: 9 is outside 0..7")
    bad[2, 3, 1] = bad[2, 3, 0]
    save_safetensors(tmp_path / "toy_01.safetensors", {"wiki": bad, "code": bad[:1]})
    refused("ids at [2, 3]")
    save_safetensors(tmp_path / "toy_01.safetensors", {"wiki": ids[1].astype(np.float32), "code": ids[1][:1]})
    refused("field 'dtype': 'F32' is not an integer type")
    save_safetensors(tmp_path / "toy_01.safetensors", {"wiki": ids[1]})
    refused("differ from toy_00.safetensors's")
    data = (tmp_path / "toy_00.safetensors").read_bytes()
    (tmp_path / "toy_01.safetensors").write_bytes(data[:-5])
    refused("runs past the end of the data")
    (tmp_path / "toy_01.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    refused("toy_01.safetensors: header: not JSON")
    (tmp_path / "toy_01.safetensors").unlink()
    refused("1 layer files")
    with pytest.raises(InputError, match="--model is required"):
        moe_lrc.import_files([tmp_path], tmp_path / "o.parquet", None)


# --- generic long format ----------------------------------------------------------------------------------------

LONG_CSV = """sequence,token,layer,expert,weight
0,0,1,5,0.7
0,0,1,2,0.3
0,0,2,4,0.6
0,0,2,0,0.4
0,1,1,3,1.0
1,0,2,7,0.5
1,0,2,6,0.5
"""
# Layers 1 and 2 are two distinct values beyond 0..1 → mapped to MoE layers 0, 1. Token (0,1) has layer 1 only and one
# expert: padded; its layer 2 and (1,0)'s layer 1 are missing: all -1 rows.


def test_long_csv_grid_padding_and_weights(tmp_path):
    (tmp_path / "l.csv").write_text(LONG_CSV)
    summary = long_format.import_files([tmp_path / "l.csv"], tmp_path / "t.parquet", TOY)
    trace, rows, chunks = rows_of(tmp_path / "t.parquet")
    assert rows["experts"].tolist() == [[5, 2], [4, 0], [3, -1], [-1, -1], [-1, -1], [7, 6]]
    assert rows["token"].tolist() == [0, 0, 1, 1, 0, 0] and rows["sequence"].tolist() == [0, 0, 0, 0, 1, 1]
    assert trace.meta.moe_layer_ids == [1, 2]
    weights = np.concatenate([c.weights for c in chunks])
    assert weights[0].tolist() == pytest.approx([0.7, 0.3]) and np.isnan(weights[2, 1])
    assert "wrote 2 missing (token, layer) entries" in summary.notes[0] and "padded 1" in summary.notes[0]


def test_long_parquet_equals_csv(tmp_path):
    (tmp_path / "l.csv").write_text(LONG_CSV)
    pd.read_csv(tmp_path / "l.csv").to_parquet(tmp_path / "l.parquet")
    long_format.import_files([tmp_path / "l.csv"], tmp_path / "a.parquet", TOY)
    long_format.import_files([tmp_path / "l.parquet"], tmp_path / "b.parquet", TOY)
    assert np.array_equal(rows_of(tmp_path / "a.parquet")[1]["experts"], rows_of(tmp_path / "b.parquet")[1]["experts"])
    frame = pd.read_csv(tmp_path / "l.csv")
    frame["expert"] = frame["expert"].astype(float)
    frame.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(InputError, match="f.parquet: column 'expert': type double is not an integer type"):
        long_format.import_files([tmp_path / "f.parquet"], tmp_path / "c.parquet", TOY)


@pytest.mark.parametrize("text, fragment", [
    ("sequence,token,layer\n0,0,0\n", "column 'expert' is missing"),
    ("sequence,token,layer,expert\n0,0,0,8\n", "row 1: field 'expert': 8 is outside 0..7"),
    ("sequence,token,layer,expert\n0,x,0,1\n", "row 1: field 'token': 'x' is not an integer"),
    ("sequence,token,layer,expert\n0,0,0,1\n0,0,0,2\n0,0,0,3\n", "row 3: field 'expert': (sequence 0, token 0, layer 0) has 3 experts"),
    ("sequence,token,layer,expert\n0,0,0,1\n0,0,0,1\n", "repeats an expert: [1, 1]"),
    ("sequence,token,layer,expert\n0,0,0,1\n0,0,40,1\n0,0,50,1\n", "field 'layer': 40 is not an MoE layer index 0..31"),
    ("sequence,token,layer,expert\n0,0,0,1\n-1,0,0,1\n", "row 2: field 'sequence': -1 is outside"),
    ("sequence,token,layer,expert,weight\n0,0,0,1,heavy\n", "field 'weight': 'heavy' is not a number"),
    ("sequence,token,layer,expert\n0,,0,1\n", "row 1: field 'token': empty"),
])
def test_long_malformed(tmp_path, capsys, text, fragment):
    (tmp_path / "bad.csv").write_text(text)
    code = main(["import", "--format", "long", "--model", "mixtral-8x7b", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bad.csv" in err and fragment in err, err


def test_cli_long_needs_model_and_imports(tmp_path, capsys):
    (tmp_path / "l.csv").write_text(LONG_CSV)
    code = main(["import", "--format", "long", str(tmp_path / "l.csv"), "-o", str(tmp_path / "o.parquet")])
    assert code == 2 and "--model is required for --format long" in capsys.readouterr().err
    np.save(tmp_path / "e.npy", np.ones((2, 32, 8), dtype=np.int64))
    code = main(["import", "--format", "moe-infinity-eam", "--model", "mixtral-8x7b", str(tmp_path / "e.npy"),
                 "-o", str(tmp_path / "e.parquet")])
    out, err = capsys.readouterr()
    assert code == 0 and "2 sequence(s)" in out and "note: an EAM collection" in err
    assert json.loads(json.dumps(load_eam_collection(tmp_path / "e.parquet").tolist()))[0][0][0] == 1
