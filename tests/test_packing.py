"""Tests of learnq.packing: bit-exact round trips, the LSB-first byte layout, byte counts and every error case."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learnq.errors import CheckpointError, QuantizationError
from learnq.packing import pack, packed_nbytes, unpack


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """Bit by bit, straight from the layout definition: code i fills stream bits [i*bits, (i+1)*bits), LSB first."""
    stream = [(code >> k) & 1 for code in codes for k in range(bits)]
    stream += [0] * (-len(stream) % 8)
    return [sum(stream[8 * i + k] << k for k in range(8)) for i in range(len(stream) // 8)]


@st.composite
def codes_and_bits(draw: st.DrawFn) -> tuple[list[int], int]:
    bits = draw(st.integers(1, 16))
    n = draw(st.integers(0, 5000))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    mode = draw(st.sampled_from(["uniform", "extremes"]))
    if mode == "uniform":
        codes = torch.randint(0, 2**bits, (n,), generator=gen)
    else:  # all-zeros / all-ones patterns catch lost or smeared bits at lane borders
        codes = torch.randint(0, 2, (n,), generator=gen) * (2**bits - 1)
    return codes.tolist(), bits


@settings(max_examples=150, deadline=None)
@given(codes_and_bits())
def test_round_trip_is_bit_exact_and_matches_reference_layout(case: tuple[list[int], int]) -> None:
    codes, bits = case
    t = torch.tensor(codes, dtype=torch.int64)
    packed = pack(t, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(len(codes), bits) == (len(codes) * bits + 7) // 8
    assert packed.tolist() == reference_pack(codes, bits)
    out = unpack(packed, bits, len(codes))
    assert out.dtype == torch.int32 and out.shape == (len(codes),)
    assert out.tolist() == codes


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1001])
def test_every_width_around_group_borders(bits: int, n: int) -> None:
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits * 1000 + n))
    packed = pack(codes, bits)
    assert packed.tolist() == reference_pack(codes.tolist(), bits)
    assert torch.equal(unpack(packed, bits, n), codes.to(torch.int32))


def test_hand_computed_two_bits() -> None:
    # 1 = 01, 2 = 10, 3 = 11 placed LSB first: 0b00_11_10_01
    packed = pack(torch.tensor([1, 2, 3]), 2)
    assert packed.tolist() == [0b00111001] == [57]
    assert unpack(packed, 2, 3).tolist() == [1, 2, 3]


def test_hand_computed_three_bits_crosses_a_byte() -> None:
    # 5 = 101 -> stream bits 0..2 = 1,0,1; 3 = 011 -> bits 3..5 = 1,1,0; 7 = 111 -> bits 6..8 = 1,1,1
    # byte 0 = bits 0..7 = 1,0,1,1,1,0,1,1 (LSB first) = 0b11011101 = 221; byte 1 = bit 8 = 1
    packed = pack(torch.tensor([5, 3, 7]), 3)
    assert packed.tolist() == [221, 1]
    assert unpack(packed, 3, 3).tolist() == [5, 3, 7]


def test_hand_computed_twelve_and_sixteen_bits() -> None:
    # 0xABC, 0x123 at 12 bits: stream = 0x123ABC as 3 little-endian bytes
    assert pack(torch.tensor([0xABC, 0x123]), 12).tolist() == [0xBC, 0x3A, 0x12]
    assert pack(torch.tensor([0xBEEF]), 16).tolist() == [0xEF, 0xBE]
    assert unpack(torch.tensor([0xEF, 0xBE], dtype=torch.uint8), 16, 1).tolist() == [0xBEEF]


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64]
)
def test_every_integer_dtype_and_any_shape(dtype: torch.dtype) -> None:
    codes = torch.randint(0, 8, (3, 5, 7), generator=torch.Generator().manual_seed(1))
    expected = pack(codes, 3)
    assert torch.equal(pack(codes.to(dtype), 3), expected)
    # non-contiguous input is flattened in C order of its logical shape
    t = codes.transpose(0, 2)
    assert torch.equal(unpack(pack(t.to(dtype), 3), 3, t.numel()), t.reshape(-1).to(torch.int32))


def test_pack_returns_a_fresh_tensor_for_passthrough_widths() -> None:
    codes = torch.tensor([1, 2, 250], dtype=torch.uint8)
    packed = pack(codes, 8)
    packed[0] = 99
    assert codes[0].item() == 1


def test_unpack_ignores_trailing_bytes_and_accepts_offset_or_strided_views() -> None:
    codes = torch.randint(0, 2**5, (29,), generator=torch.Generator().manual_seed(2))
    packed = pack(codes, 5)
    padded = torch.cat([torch.tensor([0xFF], dtype=torch.uint8), packed, torch.full((5,), 0xFF, dtype=torch.uint8)])
    assert torch.equal(unpack(padded[1:], 5, 29), codes.to(torch.int32))
    strided = torch.stack([packed, torch.full_like(packed, 0xFF)], 1).reshape(-1)[::2]
    assert torch.equal(unpack(strided, 5, 29), codes.to(torch.int32))
    wide = pack(codes * 1000, 15)
    odd = torch.cat([torch.zeros(1, dtype=torch.uint8), wide])[1:]
    assert torch.equal(unpack(odd, 15, 29), (codes * 1000).to(torch.int32))


def test_empty_input() -> None:
    for bits in (1, 3, 8, 16):
        packed = pack(torch.empty(0, dtype=torch.int64), bits)
        assert packed.dtype == torch.uint8 and packed.shape == (0,)
        out = unpack(packed, bits, 0)
        assert out.dtype == torch.int32 and out.shape == (0,)
    assert packed_nbytes(0, 7) == 0


def test_packed_nbytes() -> None:
    assert packed_nbytes(3, 2) == 1
    assert packed_nbytes(3, 3) == 2
    assert packed_nbytes(8, 3) == 3
    assert packed_nbytes(1_000_001, 16) == 2_000_002
    with pytest.raises(QuantizationError, match="numel"):
        packed_nbytes(-1, 4)
    with pytest.raises(QuantizationError, match="bits"):
        packed_nbytes(4, 17)


@pytest.mark.parametrize("bits", [0, 17, -1, 2.0, True, "4", None])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(QuantizationError, match="bits"):
        pack(torch.tensor([0, 1]), bits)  # type: ignore[arg-type]
    with pytest.raises(QuantizationError, match="bits"):
        unpack(torch.zeros(4, dtype=torch.uint8), bits, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool, torch.complex64])
def test_pack_rejects_non_integer_dtype(dtype: torch.dtype) -> None:
    with pytest.raises(QuantizationError, match="integer dtype"):
        pack(torch.zeros(4, dtype=dtype), 4)


def test_pack_rejects_non_tensor() -> None:
    with pytest.raises(QuantizationError, match="torch.Tensor"):
        pack([1, 2, 3], 2)  # type: ignore[arg-type]


def test_pack_rejects_codes_out_of_range_and_names_them() -> None:
    with pytest.raises(QuantizationError, match=r"\[0, 7\].*bits=3.*min=0, max=8"):
        pack(torch.tensor([0, 8, 3]), 3)
    with pytest.raises(QuantizationError, match=r"\[0, 3\].*min=-1, max=2"):
        pack(torch.tensor([2, -1]), 2)
    with pytest.raises(QuantizationError, match=r"\[0, 65535\].*max=65536"):
        pack(torch.tensor([65536], dtype=torch.int32), 16)
    with pytest.raises(QuantizationError, match="min=-5"):
        pack(torch.tensor([-5], dtype=torch.int8), 8)


def test_unpack_rejects_wrong_dtype_or_shape() -> None:
    with pytest.raises(CheckpointError, match="1-D uint8.*torch.int32"):
        unpack(torch.zeros(4, dtype=torch.int32), 2, 4)
    with pytest.raises(CheckpointError, match=r"1-D uint8.*\(2, 2\)"):
        unpack(torch.zeros(2, 2, dtype=torch.uint8), 2, 4)
    with pytest.raises(CheckpointError, match="1-D uint8"):
        unpack(b"\x00\x01", 2, 4)  # type: ignore[arg-type]


def test_unpack_rejects_short_input_and_names_the_numbers() -> None:
    with pytest.raises(CheckpointError, match="hold 2 bytes but 9 codes of 3 bits need 4"):
        unpack(torch.zeros(2, dtype=torch.uint8), 3, 9)


def test_unpack_rejects_bad_numel() -> None:
    with pytest.raises(CheckpointError, match="numel"):
        unpack(torch.zeros(2, dtype=torch.uint8), 3, -1)
    with pytest.raises(CheckpointError, match="numel"):
        unpack(torch.zeros(2, dtype=torch.uint8), 3, 2.5)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8, 9, 12, 16])
def test_cuda_matches_cpu(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (10_007,), generator=torch.Generator().manual_seed(bits))
    expected = pack(codes, bits)
    packed = pack(codes.cuda(), bits)
    assert packed.device.type == "cuda"
    assert torch.equal(packed.cpu(), expected)
    out = unpack(packed, bits, codes.numel())
    assert out.device.type == "cuda" and torch.equal(out.cpu(), codes.to(torch.int32))
