//! Source descriptor files: `.npy` (2-D, u1/i1/f2/f4, C order), `.fvecs`, and kim's own `.kimv`
//! (see docs/formats.md), plus id lists (one id per line).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;

use crate::descriptor::Encoding;
use crate::error::{Error, Result};

/// Rows of descriptors as read from a file: raw little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub encoding: Encoding,
    pub rows: usize,
    pub dims: usize,
    pub data: Vec<u8>,
}

pub const KIMV_MAGIC: &[u8; 4] = b"KIMV";
const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

impl Matrix {
    pub fn row(&self, i: usize) -> &[u8] {
        let w = self.dims * self.encoding.width();
        &self.data[i * w..(i + 1) * w]
    }

    /// Values as f32 (float encodings only).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.rows * self.dims);
        self.extend_f32(&mut v);
        v
    }

    /// Appends the values, as f32, to `out` (an f32 or f16 matrix).
    pub fn extend_f32(&self, out: &mut Vec<f32>) {
        match self.encoding {
            Encoding::F32 => {
                out.extend(self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            }
            Encoding::F16 => {
                out.extend(self.data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            }
            e => panic!("to_f32 on {e} matrix"),
        }
    }

    pub fn from_f32(rows: usize, dims: usize, v: &[f32]) -> Matrix {
        Matrix { encoding: Encoding::F32, rows, dims, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }

    /// Reads a matrix, choosing the format by extension.
    pub fn read(path: &Path) -> Result<Matrix> {
        let bytes = fs::read(path).map_err(|err| Error::Io { path: path.to_path_buf(), err })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let parsed = match ext {
            "npy" => parse_npy(&bytes),
            "fvecs" => parse_fvecs(&bytes),
            "kimv" => parse_kimv(&bytes),
            _ => Err(Error::Format(format!("unsupported extension {ext:?}: use .npy, .fvecs or .kimv"))),
        };
        parsed.map_err(|e| e.in_file(path))
    }

    /// Writes `.npy` (version 1.0).
    pub fn write_npy(&self, path: &Path) -> std::io::Result<()> {
        let descr = match self.encoding {
            Encoding::U8 => "|u1",
            Encoding::I8 => "|i1",
            Encoding::F16 => "<f2",
            Encoding::F32 => "<f4",
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}", self.rows, self.dims);
        let total = NPY_MAGIC.len() + 2 + 2 + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let mut f = std::io::BufWriter::new(fs::File::create(path)?);
        f.write_all(NPY_MAGIC)?;
        f.write_all(&[1, 0])?;
        f.write_all(&(header.len() as u16).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
        f.write_all(&self.data)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    }

    /// Serialises as `.kimv`.
    pub fn to_kimv(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.data.len());
        out.extend_from_slice(KIMV_MAGIC);
        out.push(1);
        out.push(encoding_code(self.encoding));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(self.dims as u32).to_le_bytes());
        out.extend_from_slice(&(self.rows as u64).to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }
}

fn encoding_code(e: Encoding) -> u8 {
    match e {
        Encoding::U8 => 0,
        Encoding::I8 => 1,
        Encoding::F16 => 2,
        Encoding::F32 => 3,
    }
}

fn checked_matrix(encoding: Encoding, rows: usize, dims: usize, payload: &[u8]) -> Result<Matrix> {
    if dims == 0 {
        return Err(fmt("zero dimensions"));
    }
    let want =
        rows.checked_mul(dims).and_then(|x| x.checked_mul(encoding.width())).ok_or_else(|| fmt("shape overflows"))?;
    if payload.len() != want {
        return Err(Error::PayloadSize { rows, dims, encoding, expected: want, got: payload.len() });
    }
    Ok(Matrix { encoding, rows, dims, data: payload.to_vec() })
}

pub fn parse_kimv(b: &[u8]) -> Result<Matrix> {
    if b.len() < 20 || &b[..4] != KIMV_MAGIC {
        return Err(fmt("not a .kimv file (bad magic or short header)"));
    }
    if b[4] != 1 {
        return Err(fmt(format!("unsupported .kimv format version {}", b[4])));
    }
    let encoding = match b[5] {
        0 => Encoding::U8,
        1 => Encoding::I8,
        2 => Encoding::F16,
        3 => Encoding::F32,
        c => return Err(fmt(format!("unknown .kimv encoding code {c}"))),
    };
    let dims = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
    let rows =
        usize::try_from(u64::from_le_bytes(b[12..20].try_into().unwrap())).map_err(|_| fmt("row count too large"))?;
    checked_matrix(encoding, rows, dims, &b[20..])
}

pub fn parse_fvecs(b: &[u8]) -> Result<Matrix> {
    if b.len() < 4 {
        return Err(fmt("empty .fvecs file"));
    }
    let dims = i32::from_le_bytes(b[..4].try_into().unwrap());
    if dims <= 0 {
        return Err(fmt(format!("bad dimension {dims} in first record")));
    }
    let dims = dims as usize;
    let rec = 4 + 4 * dims;
    if !b.len().is_multiple_of(rec) {
        return Err(fmt(format!("file size {} is not a multiple of the record size {rec}", b.len())));
    }
    let mut data = Vec::with_capacity(b.len() / rec * dims * 4);
    for (i, r) in b.chunks_exact(rec).enumerate() {
        let d = i32::from_le_bytes(r[..4].try_into().unwrap());
        if d as usize != dims {
            return Err(fmt(format!("record {i} has dimension {d}, first record has {dims}")));
        }
        data.extend_from_slice(&r[4..]);
    }
    Ok(Matrix { encoding: Encoding::F32, rows: b.len() / rec, dims, data })
}

pub fn parse_npy(b: &[u8]) -> Result<Matrix> {
    if b.len() < 10 || &b[..6] != NPY_MAGIC {
        return Err(fmt("not a .npy file (bad magic)"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(fmt(format!("unsupported .npy version {v}"))),
    };
    let header = b.get(start..start + hlen).ok_or_else(|| fmt("truncated .npy header"))?;
    let header = std::str::from_utf8(header).map_err(|_| fmt("non-UTF-8 .npy header"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| fmt("no 'descr' in .npy header"))?;
    let encoding = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "|u1" | "u1" | "<u1" => Encoding::U8,
        "|i1" | "i1" | "<i1" => Encoding::I8,
        "<f2" => Encoding::F16,
        "<f4" => Encoding::F32,
        other => {
            return Err(fmt(format!("unsupported dtype {other} (use uint8, int8, little-endian float16 or float32)")))
        }
    };
    if dict_value(header, "fortran_order").ok_or_else(|| fmt("no 'fortran_order' in .npy header"))? != "False" {
        return Err(fmt("Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape = dict_value(header, "shape").ok_or_else(|| fmt("no 'shape' in .npy header"))?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| fmt(format!("bad shape {shape}"))))
        .collect::<Result<_, _>>()?;
    let [rows, d] = dims[..] else { return Err(fmt(format!("expected a 2-D array, got shape {shape}"))) };
    checked_matrix(encoding, rows, d, &b[start + hlen..])
}

/// Finds `'key': value` in a numpy header dict; tuples are returned whole.
fn fmt(msg: impl Into<String>) -> Error {
    Error::Format(msg.into())
}

fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

/// Reads ids, one per line, and checks there are exactly `rows` distinct non-empty ones.
pub fn read_ids(path: &Path, rows: usize) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).map_err(|err| Error::Io { path: path.to_path_buf(), err })?;
    let ids: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
    check_ids(&ids, rows).map_err(|e| e.in_file(path))?;
    Ok(ids)
}

pub fn check_ids(ids: &[String], rows: usize) -> Result<()> {
    if ids.len() != rows {
        return Err(Error::IdCount { expected: rows, got: ids.len() });
    }
    let mut seen = HashSet::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        if id.is_empty() || id.contains(['\n', '\r']) {
            return Err(Error::EmptyId { line: i + 1 });
        }
        if !seen.insert(id.as_str()) {
            return Err(Error::DuplicateId { id: id.clone(), line: i + 1 });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_u8_and_f32() {
        let dir = tempfile::tempdir().unwrap();
        for m in [
            Matrix { encoding: Encoding::U8, rows: 3, dims: 5, data: (0..15).collect() },
            Matrix::from_f32(2, 3, &[1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]),
        ] {
            let p = dir.path().join("m.npy");
            m.write_npy(&p).unwrap();
            assert_eq!(Matrix::read(&p).unwrap(), m);
        }
    }

    #[test]
    fn kimv_and_fvecs_parse() {
        let m = Matrix::from_f32(2, 2, &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(parse_kimv(&m.to_kimv()).unwrap(), m);
        let mut fv = Vec::new();
        for r in 0..2 {
            fv.extend_from_slice(&2i32.to_le_bytes());
            fv.extend_from_slice(&m.data[r * 8..(r + 1) * 8]);
        }
        assert_eq!(parse_fvecs(&fv).unwrap(), m);
        fv.truncate(fv.len() - 1);
        assert!(parse_fvecs(&fv).unwrap_err().to_string().contains("multiple"));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(parse_npy(b"nope").unwrap_err().to_string().contains("magic"));
        let m = Matrix { encoding: Encoding::U8, rows: 2, dims: 2, data: vec![1, 2, 3, 4] };
        let mut k = m.to_kimv();
        k.pop();
        assert!(parse_kimv(&k).unwrap_err().to_string().contains("needs 4"));
        let ids = vec!["a".to_string(), "a".to_string()];
        assert!(check_ids(&ids, 2).unwrap_err().to_string().contains("duplicate"));
        assert!(matches!(check_ids(&ids[..1], 2), Err(Error::IdCount { expected: 2, got: 1 })));
    }
}
