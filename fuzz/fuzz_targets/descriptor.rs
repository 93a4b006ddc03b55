//! Request bytes → query (bare payload or SDK form) under every encoding and metric, then an
//! exact search over a few stored rows, so a decoded query with NaN, infinities or extreme
//! bytes also goes through the distance kernels. Input: byte 0 picks the spec, byte 1 the
//! request version (equal to the index's when even), the rest is the descriptor.
#![no_main]

use std::sync::OnceLock;

use kim_index::descriptor::{DescriptorSpec, Encoding, Metric};
use kim_index::flat::exact_search;
use kim_index::vectors::{Storage, VectorStore};
use libfuzzer_sys::fuzz_target;

const VERSION: u32 = 59;
const DIMS: usize = 8;
const ROWS: usize = 5;

fn stores() -> &'static Vec<VectorStore> {
    static S: OnceLock<Vec<VectorStore>> = OnceLock::new();
    S.get_or_init(|| {
        let mut out = Vec::new();
        for enc in [Encoding::U8, Encoding::I8, Encoding::F16, Encoding::F32] {
            for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
                let spec = DescriptorSpec::new(VERSION, DIMS, enc, metric);
                let storage = match enc {
                    Encoding::U8 | Encoding::I8 => {
                        Storage::Bytes((0..ROWS * DIMS).map(|i| (i * 37 % 256) as u8).collect())
                    }
                    Encoding::F16 | Encoding::F32 => {
                        Storage::F32((0..ROWS * DIMS).map(|i| (i as f32 * 0.37).sin()).collect())
                    }
                };
                out.push(VectorStore::new(spec, storage));
            }
        }
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Some((&v, bytes)) = rest.split_first() else { return };
    let store = &stores()[pick as usize % stores().len()];
    let version = if v % 2 == 0 { VERSION } else { u32::from(v) };
    if let Ok(q) = store.spec.decode(bytes, version) {
        let hits = exact_search(store, &q, 3);
        assert!(hits.len() <= 3);
    }
});
