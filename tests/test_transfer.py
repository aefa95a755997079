"""``strategy.transfer_dtype=bfloat16``: the shared tensors travel as bfloat16, half the bytes.

The server keeps, aggregates and checkpoints float32; the BN counters stay exact.
"""

import numpy as np
import pytest
import torch
from helpers import assert_within_bf16_rounding, r3d_backbone_state

from fedvssl.federated.records import LazyArrays, numpy_to_record, record_to_numpy
from fedvssl.federated.strategy import FedVSSL


@pytest.fixture(scope="module")
def backbone_state():
    return r3d_backbone_state()


def test_bf16_record_halves_the_bytes_and_rounds_like_torch(backbone_state):
    fp32, bf16 = numpy_to_record(backbone_state), numpy_to_record(backbone_state, "bfloat16")
    # R3D-18's backbone: 133 MB as float32; per-tensor headers keep the ratio a hair above 1/2.
    assert 0.5 <= bf16.count_bytes() / fp32.count_bytes() < 0.501
    decoded = record_to_numpy(bf16)
    assert_within_bf16_rounding(decoded, backbone_state)
    w = "backbone.stem.conv.weight"
    assert not np.array_equal(decoded[w], backbone_state[w])  # really rounded
    np.testing.assert_array_equal(decoded[w], torch.from_numpy(backbone_state[w]).bfloat16().float().numpy())
    lazy = LazyArrays(bf16)  # what the server aggregates from
    assert all(np.array_equal(lazy[k], decoded[k]) for k in backbone_state)
    assert record_to_numpy(fp32).keys() == backbone_state.keys()
    np.testing.assert_array_equal(record_to_numpy(fp32)[w], backbone_state[w])


def test_unknown_transfer_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="strategy.transfer_dtype='float16' must be one of float32, bfloat16"):
        FedVSSL(0.9, 1, "backbone", 2, 3, seed=7, out_dir=tmp_path, transfer_dtype="float16")


@pytest.mark.parametrize(
    "v",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.array(7, np.int64),
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        np.arange(10, dtype=np.float32)[::3],
        np.zeros((0, 5), np.float32),
    ],
)
def test_records_hold_exactly_what_flowers_own_arrays_hold(v):
    """The one-copy .npy bytes equal Flower's Array(ndarray) (np.save): any Flower reader decodes them."""
    from flwr.app import Array

    ours, flowers = numpy_to_record({"t": v})["t"], Array(np.require(v, requirements="C"))
    assert ours.data == flowers.data
    assert (ours.dtype, tuple(ours.shape), ours.stype) == (flowers.dtype, tuple(flowers.shape), flowers.stype)
    np.testing.assert_array_equal(ours.numpy(), v)
    np.testing.assert_array_equal(LazyArrays(numpy_to_record({"t": v}))["t"], v)
    in_memory = numpy_to_record({"t": v}, in_memory=True)["t"]
    assert isinstance(in_memory.data, np.ndarray) and in_memory.data.tobytes() == flowers.data
    np.testing.assert_array_equal(in_memory.numpy(), v)
    np.testing.assert_array_equal(LazyArrays(numpy_to_record({"t": v}, in_memory=True))["t"], v)


def pickled_as_ray_does(obj):
    """Pickle protocol 5 with a buffer callback, as Ray serialises a task's arguments and results:
    buffers that support it go out of band, straight into the object store."""
    import pickle

    buffers = []
    stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(stream), pickle.loads(stream, buffers=buffers)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_in_memory_records_cross_ray_without_a_pickled_copy(backbone_state, dtype):
    """The in-process simulation's records: the tensors leave the pickle stream, and arrive equal."""
    from fedvssl.federated.records import is_in_memory

    plain, in_memory = numpy_to_record(backbone_state, dtype), numpy_to_record(backbone_state, dtype, in_memory=True)
    assert in_memory.count_bytes() == plain.count_bytes()
    assert not is_in_memory(plain) and is_in_memory(in_memory)
    stream_plain, _ = pickled_as_ray_does(plain)
    stream_in_memory, received = pickled_as_ray_does(in_memory)
    assert stream_plain > plain.count_bytes()  # bytes are pickled into the stream
    assert stream_in_memory < 0.001 * in_memory.count_bytes()  # only the metadata is
    assert is_in_memory(received)
    lazy, expected = LazyArrays(received), record_to_numpy(plain)
    for k in backbone_state:
        np.testing.assert_array_equal(lazy[k], expected[k])
