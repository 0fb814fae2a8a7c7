//! Parity arithmetic, bit-exact with the Linux kernel's raid6 library: P is the XOR of the
//! data blocks; Q is the syndrome sum of g^i * D_i in GF(2^8) with the polynomial 0x11d and
//! g = 2, i being a block's place in the syndrome order the caller passes.
//!
//! The generation kernels work on 64-byte strips held in registers, every data block read
//! once per strip, as the kernel's raid6 routines do. They are plain Rust over u64 lanes,
//! compiled twice: once for the baseline CPU and once with AVX2 enabled, picked at run time
//! (the compiler turns the lanes into 256-bit vector instructions there). Recovery, which is
//! rare, uses 256-entry multiplication tables.

/// GF(2^8) with x^8 + x^4 + x^3 + x^2 + 1: exp and log tables for g = 2.
struct Gf {
    exp: [u8; 512],
    log: [u8; 256],
}

const fn gf_tables() -> Gf {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        exp[i + 255] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11d;
        }
        i += 1;
    }
    Gf { exp, log }
}

static GF: Gf = gf_tables();

/// a * b in GF(2^8).
pub fn gf_mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        GF.exp[GF.log[a as usize] as usize + GF.log[b as usize] as usize]
    }
}

/// g^n.
fn gf_pow2(n: usize) -> u8 {
    GF.exp[n % 255]
}

/// The multiplicative inverse of a non-zero element.
fn gf_inv(a: u8) -> u8 {
    GF.exp[255 - GF.log[a as usize] as usize]
}

/// The 256 products `k * x`, for multiplying a block by the constant k.
fn mul_table(k: u8) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (x, v) in t.iter_mut().enumerate() {
        *v = gf_mul(k, x as u8);
    }
    t
}

/// dst ^= src (equal lengths).
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "parity blocks have one length");
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in d.by_ref().zip(s.by_ref()) {
        let x = u64::from_ne_bytes(d.try_into().expect("8 bytes"))
            ^ u64::from_ne_bytes(s.try_into().expect("8 bytes"));
        d.copy_from_slice(&x.to_ne_bytes());
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d ^= s;
    }
}

/// dst = srcs[0] ^ srcs[1] ^ ... (zero for none).
pub fn xor_blocks(dst: &mut [u8], srcs: &[&[u8]]) {
    check_lengths(srcs, dst.len());
    if srcs.is_empty() {
        dst.fill(0);
        return;
    }
    let done = if have_avx2() {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { xor_strips_avx2(srcs, dst) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!()
    } else {
        xor_strips(srcs, dst)
    };
    for i in done..dst.len() {
        dst[i] = srcs.iter().fold(0, |acc, s| acc ^ s[i]);
    }
}

/// q = q * 2 in GF(2^8), bytewise, 8 bytes at a time.
fn mul2_into(q: &mut [u8]) {
    let mut words = q.chunks_exact_mut(8);
    for w in words.by_ref() {
        let x = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        w.copy_from_slice(&mul2(x).to_ne_bytes());
    }
    for b in words.into_remainder() {
        *b = gf_mul(*b, 2);
    }
}

/// Bytes per strip of the generation kernels.
const STRIP: usize = 64;
type Lanes = [u8; STRIP];

#[inline(always)]
fn load(b: &[u8], at: usize) -> Lanes {
    b[at..at + STRIP].try_into().expect("a whole strip")
}

#[inline(always)]
fn store(b: &mut [u8], at: usize, l: &Lanes) {
    b[at..at + STRIP].copy_from_slice(l);
}

/// A byte times 2 in GF(2^8), branch-free so that it vectorises.
#[inline(always)]
fn mul2_byte(v: u8) -> u8 {
    (v << 1) ^ ((((v as i8) >> 7) as u8) & 0x1d)
}

/// Each byte of `x` times 2 in GF(2^8).
#[inline(always)]
fn mul2(x: u64) -> u64 {
    let high = x & 0x8080_8080_8080_8080;
    ((x & 0x7f7f_7f7f_7f7f_7f7f) << 1) ^ ((high >> 7).wrapping_mul(0x1d))
}

/// P and Q over the whole strips; returns where the strips end.
#[inline(always)]
fn pq_strips(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> usize {
    let full = p.len() / STRIP * STRIP;
    let Some((last, rest)) = data.split_last() else {
        return 0;
    };
    for at in (0..full).step_by(STRIP) {
        let mut wp = load(last, at);
        let mut wq = wp;
        // Horner's rule from the highest index down: q = q * g ^ D_z.
        for d in rest.iter().rev() {
            let wd = load(d, at);
            for k in 0..STRIP {
                wp[k] ^= wd[k];
                wq[k] = mul2_byte(wq[k]) ^ wd[k];
            }
        }
        store(p, at, &wp);
        store(q, at, &wq);
    }
    full
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pq_strips_avx2(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> usize {
    pq_strips(data, p, q)
}

/// XOR of `data` over the whole strips; returns where the strips end.
#[inline(always)]
fn xor_strips(data: &[&[u8]], dst: &mut [u8]) -> usize {
    let full = dst.len() / STRIP * STRIP;
    let Some((first, rest)) = data.split_first() else {
        return 0;
    };
    for at in (0..full).step_by(STRIP) {
        let mut w = load(first, at);
        for d in rest {
            let wd = load(d, at);
            for k in 0..STRIP {
                w[k] ^= wd[k];
            }
        }
        store(dst, at, &w);
    }
    full
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xor_strips_avx2(data: &[&[u8]], dst: &mut [u8]) -> usize {
    xor_strips(data, dst)
}

fn have_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which generation kernel this CPU runs: "avx2" or "portable".
pub fn kernel_name() -> &'static str {
    if have_avx2() {
        "avx2"
    } else {
        "portable"
    }
}

fn check_lengths(data: &[&[u8]], len: usize) {
    assert!(
        data.iter().all(|d| d.len() == len),
        "parity blocks have one length"
    );
}

/// P and Q of `data` in syndrome order (all blocks one length).
pub fn gen_pq(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    check_lengths(data, p.len());
    assert_eq!(p.len(), q.len(), "parity blocks have one length");
    let done = if have_avx2() {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { pq_strips_avx2(data, p, q) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!()
    } else {
        pq_strips(data, p, q)
    };
    // The tail, byte by byte.
    for i in done..p.len() {
        let (mut wp, mut wq) = (0u8, 0u8);
        for d in data.iter().rev() {
            wp ^= d[i];
            wq = gf_mul(wq, 2) ^ d[i];
        }
        p[i] = wp;
        q[i] = wq;
    }
}

/// Q of `data` with absent blocks counted as zero.
fn syndrome(data: &[Option<&[u8]>], len: usize) -> Vec<u8> {
    let mut q = vec![0u8; len];
    for d in data.iter().rev() {
        mul2_into(&mut q);
        if let Some(d) = d {
            xor_into(&mut q, d);
        }
    }
    q
}

/// One data block from P: the XOR of P and every other data block.
pub fn recover_one_from_p(others: &[&[u8]], p: &[u8], out: &mut [u8]) {
    out.copy_from_slice(p);
    for o in others {
        xor_into(out, o);
    }
}

/// Data block `missing` (its entry in `data` is ignored) when P is lost too: from Q.
pub fn recover_one_from_q(data: &[Option<&[u8]>], missing: usize, q: &[u8], out: &mut [u8]) {
    let mut known: Vec<Option<&[u8]>> = data.to_vec();
    known[missing] = None;
    let mut dx = syndrome(&known, q.len());
    xor_into(&mut dx, q);
    // dx = g^missing * D; divide by g^missing.
    let t = mul_table(gf_inv(gf_pow2(missing)));
    for (o, x) in out.iter_mut().zip(&dx) {
        *o = t[*x as usize];
    }
}

/// Data blocks `a` and `b` (entries in `data` ignored) from P and Q.
pub fn recover_two(
    data: &[Option<&[u8]>],
    a: usize,
    b: usize,
    p: &[u8],
    q: &[u8],
    out_a: &mut [u8],
    out_b: &mut [u8],
) {
    let (x, y, out_x, out_y) = if a < b {
        (a, b, out_a, out_b)
    } else {
        (b, a, out_b, out_a)
    };
    let mut known: Vec<Option<&[u8]>> = data.to_vec();
    known[x] = None;
    known[y] = None;
    // pxy = Dx ^ Dy, qxy = g^x Dx ^ g^y Dy.
    let mut pxy = p.to_vec();
    for d in known.iter().flatten() {
        xor_into(&mut pxy, d);
    }
    let mut qxy = syndrome(&known, q.len());
    xor_into(&mut qxy, q);
    // Dx = A * pxy ^ B * qxy with A = g^(y-x) / (g^(y-x) + 1), B = g^-x / (g^(y-x) + 1).
    let gyx = gf_pow2(y - x);
    let denom = gf_inv(gyx ^ 1);
    let ta = mul_table(gf_mul(gyx, denom));
    let tb = mul_table(gf_mul(gf_inv(gf_pow2(x)), denom));
    for i in 0..p.len() {
        let dx = ta[pxy[i] as usize] ^ tb[qxy[i] as usize];
        out_x[i] = dx;
        out_y[i] = pxy[i] ^ dx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// GF multiply by shift and reduce, the textbook way.
    fn slow_mul(mut a: u8, mut b: u8) -> u8 {
        let mut r = 0u8;
        while b != 0 {
            if b & 1 != 0 {
                r ^= a;
            }
            let carry = a & 0x80 != 0;
            a <<= 1;
            if carry {
                a ^= 0x1d;
            }
            b >>= 1;
        }
        r
    }

    fn slow_pq(data: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let len = data[0].len();
        let mut p = vec![0u8; len];
        let mut q = vec![0u8; len];
        for (i, d) in data.iter().enumerate() {
            let mut g = 1u8;
            for _ in 0..i {
                g = slow_mul(g, 2);
            }
            for k in 0..len {
                p[k] ^= d[k];
                q[k] ^= slow_mul(g, d[k]);
            }
        }
        (p, q)
    }

    #[test]
    fn multiplication_matches_shift_and_reduce() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(gf_mul(a, b), slow_mul(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn the_portable_and_the_chosen_kernels_agree() {
        let data: Vec<Vec<u8>> = (0..5)
            .map(|b| (0..1000).map(|i| (i * 13 + b * 101) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let (mut p1, mut q1) = (vec![0u8; 1000], vec![0u8; 1000]);
        let (mut p2, mut q2) = (vec![0u8; 1000], vec![0u8; 1000]);
        gen_pq(&refs, &mut p1, &mut q1);
        let done = pq_strips(&refs, &mut p2, &mut q2);
        assert_eq!(&p1[..done], &p2[..done]);
        assert_eq!(&q1[..done], &q2[..done]);
        let mut x = vec![0u8; 1000];
        let done = xor_strips(&refs, &mut x);
        assert_eq!(&p1[..done], &x[..done]);
    }

    #[test]
    fn a_hand_checked_syndrome() {
        // P = 1 ^ 2 ^ 3 = 0; Q = 1*1 ^ 2*2 ^ 4*3 = 1 ^ 4 ^ 12 = 9.
        let data: [&[u8]; 3] = [&[1], &[2], &[3]];
        let (mut p, mut q) = ([0u8], [0u8]);
        gen_pq(&data, &mut p, &mut q);
        assert_eq!((p[0], q[0]), (0, 9));
    }

    proptest! {
        #[test]
        fn pq_and_every_recovery_match_the_reference(
            blocks in 1usize..12,
            len in 1usize..200,
            seed in any::<u64>(),
        ) {
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 };
            let data: Vec<Vec<u8>> = (0..blocks).map(|_| (0..len).map(|_| next()).collect()).collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            gen_pq(&refs, &mut p, &mut q);
            let (rp, rq) = slow_pq(&data);
            prop_assert_eq!(&p, &rp);
            prop_assert_eq!(&q, &rq);
            for m in 0..blocks {
                let opt: Vec<Option<&[u8]>> = refs.iter().map(|d| Some(*d)).collect();
                let others: Vec<&[u8]> = refs.iter().enumerate().filter(|(i, _)| *i != m).map(|(_, d)| *d).collect();
                let mut out = vec![0u8; len];
                recover_one_from_p(&others, &p, &mut out);
                prop_assert_eq!(&out, &data[m]);
                let mut out = vec![0u8; len];
                recover_one_from_q(&opt, m, &q, &mut out);
                prop_assert_eq!(&out, &data[m]);
                for n in 0..blocks {
                    if n == m { continue; }
                    let (mut oa, mut ob) = (vec![0u8; len], vec![0u8; len]);
                    recover_two(&opt, m, n, &p, &q, &mut oa, &mut ob);
                    prop_assert_eq!(&oa, &data[m]);
                    prop_assert_eq!(&ob, &data[n]);
                }
            }
        }
    }
}
