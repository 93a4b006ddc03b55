//! Seeded face-like synthetic descriptors for demos, tests and benchmarks.
//!
//! Real face descriptors are unit vectors with low intrinsic dimension: identities form tight
//! clusters inside a lower-dimensional subspace. Isotropic random vectors would be far harder
//! (and less realistic) for any graph index, so the generator draws identity centres and
//! within-identity variation from a random `intrinsic`-dimensional subspace plus a little
//! full-dimensional noise.

use crate::descriptor::Encoding;
use crate::io::Matrix;
use crate::rng::SeededRng;

#[derive(Debug, Clone, Copy)]
pub struct SynthParams {
    pub identities: usize,
    pub samples: usize,
    pub dimensions: usize,
    pub intrinsic: usize,
    pub mated_probes: usize,
    pub nonmated_probes: usize,
    pub encoding: Encoding,
    pub seed: u64,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            identities: 10_000,
            samples: 5,
            dimensions: 512,
            intrinsic: 48,
            mated_probes: 200,
            nonmated_probes: 200,
            encoding: Encoding::U8,
            seed: 42,
        }
    }
}

pub struct SynthData {
    pub base: Matrix,
    pub ids: Vec<String>,
    /// New samples of enrolled identities.
    pub mated: Matrix,
    /// Identity index (row / samples) each mated probe belongs to.
    pub mated_identity: Vec<usize>,
    /// Samples of identities that are not enrolled.
    pub nonmated: Matrix,
}

/// Quantisation scale for unit vectors into u8/i8: a ±5σ component range fills ±127.
pub fn quant_scale(dims: usize) -> f32 {
    127.0 * (dims as f32).sqrt() / 5.0
}

struct Gen {
    rng: SeededRng,
    basis: Vec<f32>, // intrinsic × dims
    p: SynthParams,
}

impl Gen {
    fn gaussian(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.normal() as f32).collect()
    }

    /// A random direction: mostly in the subspace, a little everywhere.
    fn direction(&mut self, full_noise: f32) -> Vec<f32> {
        let (k, d) = (self.p.intrinsic, self.p.dimensions);
        let w = self.gaussian(k);
        let mut v = self.gaussian(d);
        v.iter_mut().for_each(|x| *x *= full_noise);
        for (j, wj) in w.iter().enumerate() {
            let row = &self.basis[j * d..(j + 1) * d];
            v.iter_mut().zip(row).for_each(|(x, b)| *x += wj * b);
        }
        normalize(v)
    }

    fn sample(&mut self, centre: &[f32]) -> Vec<f32> {
        let noise = self.direction(0.3);
        normalize(centre.iter().zip(&noise).map(|(c, n)| c + 0.7 * n).collect())
    }
}

fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn encode(rows: &[Vec<f32>], dims: usize, e: Encoding) -> Matrix {
    let s = quant_scale(dims);
    let data = match e {
        Encoding::F32 => rows.iter().flatten().flat_map(|x| x.to_le_bytes()).collect(),
        Encoding::F16 => rows.iter().flatten().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        Encoding::U8 => rows.iter().flatten().map(|x| (x * s + 128.0).round().clamp(0.0, 255.0) as u8).collect(),
        Encoding::I8 => rows.iter().flatten().map(|x| (x * s).round().clamp(-127.0, 127.0) as i8 as u8).collect(),
    };
    Matrix { encoding: e, rows: rows.len(), dims, data }
}

pub fn generate(p: SynthParams) -> SynthData {
    let (d, k) = (p.dimensions, p.intrinsic.clamp(1, p.dimensions));
    let p = SynthParams { intrinsic: k, ..p };
    let mut g = Gen { rng: SeededRng::new(p.seed), basis: Vec::new(), p };
    g.basis = g.gaussian(k * d).into_iter().map(|x| x / (d as f32).sqrt()).collect();
    let centres: Vec<Vec<f32>> = (0..p.identities).map(|_| g.direction(0.1)).collect();
    let mut base = Vec::with_capacity(p.identities * p.samples);
    let mut ids = Vec::with_capacity(p.identities * p.samples);
    for (i, c) in centres.iter().enumerate() {
        for s in 0..p.samples {
            base.push(g.sample(c));
            ids.push(format!("face-{i:07}-{s}"));
        }
    }
    let mated_identity: Vec<usize> =
        (0..p.mated_probes).map(|_| g.rng.below(p.identities.max(1) as u64) as usize).collect();
    let mated: Vec<Vec<f32>> = mated_identity.iter().map(|&i| g.sample(&centres[i].clone())).collect();
    let nonmated: Vec<Vec<f32>> = (0..p.nonmated_probes)
        .map(|_| {
            let c = g.direction(0.1);
            g.sample(&c)
        })
        .collect();
    SynthData {
        base: encode(&base, d, p.encoding),
        ids,
        mated: encode(&mated, d, p.encoding),
        mated_identity,
        nonmated: encode(&nonmated, d, p.encoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_clustered() {
        let p = SynthParams {
            identities: 50,
            samples: 3,
            dimensions: 64,
            intrinsic: 16,
            mated_probes: 5,
            nonmated_probes: 5,
            encoding: Encoding::F32,
            seed: 9,
        };
        let a = generate(p);
        let b = generate(p);
        assert_eq!(a.base, b.base);
        assert_eq!(a.base.rows, 150);
        let v = a.base.to_f32();
        let row = |i: usize| &v[i * 64..(i + 1) * 64];
        let cos = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
        // Samples of one identity are much closer than samples of different identities.
        let same: f32 = (0..50).map(|i| cos(row(3 * i), row(3 * i + 1))).sum::<f32>() / 50.0;
        let diff: f32 = (0..49).map(|i| cos(row(3 * i), row(3 * i + 3))).sum::<f32>() / 49.0;
        assert!(same > 0.5 && diff.abs() < 0.3, "same {same} diff {diff}");
        let c = generate(SynthParams { seed: 10, ..p });
        assert_ne!(a.base, c.base);
    }
}
