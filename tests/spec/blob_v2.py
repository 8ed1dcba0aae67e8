#!/usr/bin/env python3
"""Reproduce the golden vectors of a FLMB v2 policy blob from docs/blob.md alone.

An independent implementation of the blob format and its numerics, written from the
specification (docs/blob.md) without the Rust sources: `tests/tests/spec_conformance.rs`
runs it on the shipped blob and on multi-step fixtures, so the specification stays
complete enough to reproduce every golden vector bit for bit.

Standard library only.  Usage: blob_v2.py BLOB GOLDEN   (exit status 0 iff all match)
"""
import struct
import sys
import zlib
from fractions import Fraction

if len(sys.argv) != 3:
    sys.exit("usage: blob_v2.py BLOB GOLDEN")
BLOB, GOLDEN = sys.argv[1], sys.argv[2]

# ---------------------------------------------------------------- f32 helpers

def f32(x):
    """Round a Python float (binary64) to the nearest binary32 (ties to even)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_from_int(n):
    """Exact int -> f32, round to nearest-even."""
    if abs(n) < (1 << 53):
        return f32(float(n))  # exact in binary64, single rounding to f32
    # exact path for big ints: float(Fraction) is correctly rounded to f64,
    # which could double round; do it by hand instead.
    sign = -1 if n < 0 else 1
    a = abs(n)
    e = a.bit_length() - 24
    q, r = divmod(a, 1 << e)
    half = 1 << (e - 1)
    if r > half or (r == half and (q & 1)):
        q += 1
    return f32(sign * float(q) * 2.0 ** e)


def fadd(a, b): return f32(a + b)
def fsub(a, b): return f32(a - b)
def fmul(a, b): return f32(a * b)
def fdiv(a, b): return f32(a / b)


def fclamp(x, lo, hi):
    # Rust f32::clamp: if x < lo {lo}; if x > hi {hi}
    if x < lo:
        x = lo
    if x > hi:
        x = hi
    return x


def as_i32(x):
    """Rust `f32 as i32`: truncate toward zero, saturate, NaN -> 0."""
    if x != x:
        return 0
    if x >= 2147483647.0:
        return 2147483647
    if x <= -2147483648.0:
        return -2147483648
    return int(x)  # int() truncates toward zero


def round_half_away(x):
    if x >= 0:
        return as_i32(fadd(x, 0.5))
    return as_i32(fsub(x, 0.5))


def clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


def sat16s(v): return clamp(v, -32767, 32767)
def sat16(v): return clamp(v, -32768, 32767)


def wrap32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def f32_bits(x): return struct.unpack("<I", struct.pack("<f", x))[0]

# ------------------------------------------------------------------ postcard

class Reader:
    def __init__(self, buf):
        self.b = buf
        self.p = 0

    def take(self, n):
        if self.p + n > len(self.b):
            raise ValueError("Malformed: unexpected end")
        out = self.b[self.p:self.p + n]
        self.p += n
        return out

    def u8(self): return self.take(1)[0]

    def varint(self, bits):
        val = 0
        shift = 0
        maxbytes = (bits + 6) // 7
        for _ in range(maxbytes):
            byte = self.u8()
            val |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if val >> bits:
                    raise ValueError("Malformed: varint overflow")
                return val
            shift += 7
        raise ValueError("Malformed: varint too long")

    def u16(self): return self.varint(16)
    def u32(self): return self.varint(32)
    def u64(self): return self.varint(64)
    def f32(self): return struct.unpack("<f", self.take(4))[0]
    def bytes_(self): return bytes(self.take(self.u32()))  # usize length varint
    def str_(self): return self.bytes_().decode("utf-8")

    def option(self, inner):
        tag = self.u8()
        if tag == 0:
            return None
        if tag == 1:
            return inner()
        raise ValueError("Malformed: bad Option tag")


def f32s(b): return list(struct.unpack("<%df" % (len(b) // 4), b))
def i32s(b): return list(struct.unpack("<%di" % (len(b) // 4), b))
def i16s(b): return list(struct.unpack("<%dh" % (len(b) // 2), b))
def i8s(b): return list(struct.unpack("<%db" % len(b), b))

# ---------------------------------------------------------------- blob parse

def weights(r):
    """`weight_bytes` (u8: 1 = int8, 2 = int16 LE), then the weight byte string."""
    width = r.u8()
    data = r.bytes_()
    if width == 1:
        values = i8s(data)
        assert -128 not in values
        return values
    if width == 2:
        values = i16s(data)
        assert -32768 not in values
        return values
    raise ValueError("InvalidValue: weight_bytes %d" % width)


def parse_blob(data):
    if len(data) < 16:
        raise ValueError("Truncated")
    if data[0:4] != b"FLMB":
        raise ValueError("BadMagic")
    version, reserved, plen, crc = struct.unpack_from("<HHII", data, 4)
    if version != 2:
        raise ValueError("UnsupportedVersion(%d)" % version)
    if reserved != 0:
        raise ValueError("ReservedNotZero")
    if len(data) < 16 + plen:
        raise ValueError("Truncated")
    if len(data) > 16 + plen:
        raise ValueError("TrailingBytes")
    payload = data[16:]
    computed = zlib.crc32(payload) & 0xFFFFFFFF
    if computed != crc:
        raise ValueError("BadCrc stored=%08x computed=%08x" % (crc, computed))

    r = Reader(payload)
    meta = {}
    meta["env_id"] = r.str_()
    meta["algorithm"] = r.u32()
    meta["obs_dim"] = r.u16()
    meta["act_dim"] = r.u16()
    meta["nfe"] = r.u16()
    meta["action_low"] = f32s(r.bytes_())
    meta["action_high"] = f32s(r.bytes_())
    meta["noise_std"] = r.f32()
    meta["trainer_version"] = r.str_()
    meta["git_revision"] = r.str_()
    meta["env_steps"] = r.u64()
    meta["seed"] = r.u64()
    meta["float_return"] = r.option(r.f32)
    meta["int8_return"] = r.option(r.f32)

    inp = {}
    inp["obs_mean"] = f32s(r.bytes_())
    inp["obs_inv_std"] = f32s(r.bytes_())
    inp["obs_clip"] = r.f32()
    inp["inv_scales"] = f32s(r.bytes_())

    nh = r.u32()
    if nh > 6:
        raise ValueError("Malformed: more than 6 hidden layers")
    hidden = []
    for _ in range(nh):
        L = {}
        L["in_dim"] = r.u16()
        L["out_dim"] = r.u16()
        L["weights"] = weights(r)
        L["biases"] = i32s(r.bytes_())
        L["multipliers"] = i32s(r.bytes_())
        L["shifts"] = i8s(r.bytes_())
        L["activation"] = i16s(r.bytes_())
        hidden.append(L)

    out = {}
    out["in_dim"] = r.u16()
    out["out_dim"] = r.u16()
    out["weights"] = weights(r)
    out["biases"] = i32s(r.bytes_())
    out["scales"] = f32s(r.bytes_())
    if r.p != len(payload):
        raise ValueError("TrailingBytes (postcard stopped at %d of %d)" % (r.p, len(payload)))

    # light validation (lengths, ranges) per section 2.7
    od, ad, nfe = meta["obs_dim"], meta["act_dim"], meta["nfe"]
    assert 1 <= od <= 384 and 1 <= ad <= 32 and 1 <= nfe <= 32 and nh >= 1
    assert len(meta["action_low"]) == ad and len(meta["action_high"]) == ad
    assert len(inp["obs_mean"]) == od and len(inp["obs_inv_std"]) == od
    assert len(inp["inv_scales"]) == od + ad
    width = od + ad
    for li, L in enumerate(hidden):
        assert L["in_dim"] == width and 1 <= L["out_dim"] <= 512
        sets = nfe if li == 0 else 1
        assert len(L["weights"]) == L["in_dim"] * L["out_dim"]
        assert len(L["biases"]) == L["out_dim"] * sets
        assert len(L["multipliers"]) == L["out_dim"]
        assert len(L["shifts"]) == L["out_dim"]
        assert len(L["activation"]) == 513
        assert all(m >= 0 for m in L["multipliers"])
        assert all(-31 <= s <= 30 for s in L["shifts"])
        assert -32768 not in L["activation"]
        width = L["out_dim"]
    assert out["in_dim"] == width and out["out_dim"] == ad
    assert len(out["weights"]) == ad * width and len(out["biases"]) == ad
    assert len(out["scales"]) == ad
    return {"meta": meta, "input": inp, "hidden": hidden, "output": out}

# -------------------------------------------------------------- golden parse

def parse_golden(data):
    r = Reader(data)
    blob_hash = r.u32()
    od = r.u16()
    ad = r.u16()
    recs_b = r.bytes_()
    if r.p != len(data):
        raise ValueError("golden: trailing bytes")
    size = 1 + 8 + 4 * (od + ad)
    if len(recs_b) % size:
        raise ValueError("golden: records not a multiple of record size")
    recs = []
    for off in range(0, len(recs_b), size):
        rec = recs_b[off:off + size]
        mode = rec[0]
        if mode not in (0, 1):
            raise ValueError("Malformed mode")
        seed = struct.unpack_from("<Q", rec, 1)[0]
        obs = list(struct.unpack_from("<%df" % od, rec, 9))
        act_bits = list(struct.unpack_from("<%dI" % ad, rec, 9 + 4 * od))
        recs.append((mode, seed, obs, act_bits))
    return blob_hash, od, ad, recs

# -------------------------------------------------------------------- numerics

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def normal(gen):
    total = 0
    for _ in range(6):
        r = gen.next()
        total += (r & 0xFFFFFF) + ((r >> 32) & 0xFFFFFF)
    centred = total - 6 * (1 << 24)
    return fmul(f32_from_int(centred), 2.0 ** -24)


def requantize(acc, m, shift):
    # acc already includes the bias (wrapping i32 add)
    num = acc * m + (1 << (30 - shift))
    v = num >> (31 - shift)  # arithmetic shift = floor division
    v = clamp(v, -(1 << 31), (1 << 31) - 1)
    return sat16(v)


def activate(pre, T):
    u = pre + 32768
    k = u >> 7
    f = u & 127
    return T[k] + (((T[k + 1] - T[k]) * f + 64) >> 7)


def act(blob, mode, seed, obs):
    meta, inp, hidden, out = blob["meta"], blob["input"], blob["hidden"], blob["output"]
    od, ad, nfe = meta["obs_dim"], meta["act_dim"], meta["nfe"]
    sigma = meta["noise_std"]
    # 5.1 noise
    if mode == 1:
        gen = SplitMix64(seed)
        z = [fmul(normal(gen), sigma) for _ in range(ad)]
    else:
        z = [0.0] * ad
    # 5.2 observation part, once
    clip = inp["obs_clip"]
    inv_scales = inp["inv_scales"]
    qobs = []
    for i in range(od):
        n = fmul(fsub(obs[i], inp["obs_mean"][i]), inp["obs_inv_std"][i])
        n = fclamp(n, -clip, clip)
        qobs.append(sat16s(round_half_away(fmul(n, inv_scales[i]))))
    step = fdiv(f32(1.0), f32_from_int(nfe))
    for k in range(nfe):
        qz = [sat16s(round_half_away(fmul(z[j], inv_scales[od + j]))) for j in range(ad)]
        x = qobs + qz
        for li, L in enumerate(hidden):
            ind, outd = L["in_dim"], L["out_dim"]
            W = L["weights"]
            boff = k * outd if li == 0 else 0
            B = L["biases"]
            T = L["activation"]
            y = []
            for c in range(outd):
                row = W[c * ind:(c + 1) * ind]
                acc = wrap32(sum(w * xi for w, xi in zip(row, x)))
                acc = wrap32(acc + B[boff + c])
                pre = requantize(acc, L["multipliers"][c], L["shifts"][c])
                y.append(activate(pre, T))
            x = y
        ind = out["in_dim"]
        W = out["weights"]
        for c in range(ad):
            row = W[c * ind:(c + 1) * ind]
            acc = wrap32(sum(w * xi for w, xi in zip(row, x)))
            acc = wrap32(acc + out["biases"][c])
            u = fmul(f32_from_int(acc), out["scales"][c])
            z[c] = fsub(z[c], fmul(step, u))
    a = []
    for c in range(ad):
        lo, hi = meta["action_low"][c], meta["action_high"][c]
        v = fclamp(z[c], -1.0, 1.0)
        v = fadd(v, 1.0)
        v = fmul(v, 0.5)
        v = fmul(v, fsub(hi, lo))
        v = fadd(lo, v)
        v = fclamp(v, lo, hi)
        a.append(v)
    return a

# ------------------------------------------------------------------- checks

def self_check_noise():
    g = SplitMix64(0)
    d1, d2 = g.next(), g.next()
    assert d1 == 0xE220A8397B1DCDAF and d2 == 0x6E789E6AA1B965F4, (hex(d1), hex(d2))
    g = SplitMix64(0x5EED0001)
    s1, s2 = normal(g), normal(g)
    assert s1 == -14001557 / 2 ** 24 and s2 == 16741346 / 2 ** 24, (s1 * 2 ** 24, s2 * 2 ** 24)


def main():
    self_check_noise()
    data = open(BLOB, "rb").read()
    blob = parse_blob(data)
    meta = blob["meta"]
    alg = {0: "FlameM", 1: "FlameR"}.get(meta["algorithm"], "?")
    widths = [L["out_dim"] for L in blob["hidden"]]
    print("blob: %s  %s  obs_dim=%d act_dim=%d nfe=%d noise_std=%r" % (
        meta["env_id"], alg, meta["obs_dim"], meta["act_dim"], meta["nfe"], meta["noise_std"]))
    print("      trainer %s rev %s env_steps=%d seed=%d float_return=%r int8_return=%r" % (
        meta["trainer_version"], meta["git_revision"], meta["env_steps"], meta["seed"],
        meta["float_return"], meta["int8_return"]))
    print("      layers: %d -> %s -> %d   shifts range %s" % (
        meta["obs_dim"] + meta["act_dim"], " -> ".join(map(str, widths)), blob["output"]["out_dim"],
        sorted({s for L in blob["hidden"] for s in L["shifts"]})[::1][:1] +
        sorted({s for L in blob["hidden"] for s in L["shifts"]})[-1:]))

    gdata = open(GOLDEN, "rb").read()
    blob_hash, god, gad, recs = parse_golden(gdata)
    file_crc = zlib.crc32(data) & 0xFFFFFFFF
    print("golden: blob_hash=%08x, crc32(blob file)=%08x -> %s; %d records" % (
        blob_hash, file_crc, "OK" if blob_hash == file_crc else "MISMATCH", len(recs)))
    assert god == meta["obs_dim"] and gad == meta["act_dim"]

    ok = 0
    for idx, (mode, seed, obs, bits) in enumerate(recs):
        a = act(blob, mode, seed, obs)
        got = [f32_bits(v) for v in a]
        same = got == bits
        ok += same
        tag = "det " if mode == 0 else "stoc seed=%#x" % seed
        if same:
            print("record %2d %-20s match" % (idx, tag))
        else:
            diffs = [(c, "%08x" % g, "%08x" % b) for c, (g, b) in enumerate(zip(got, bits)) if g != b]
            print("record %2d %-20s MISMATCH %s" % (idx, tag, diffs))
    print("%d of %d records bit-exact" % (ok, len(recs)))
    return ok == len(recs) and blob_hash == file_crc


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
