//! The ISA-L backend: Intel's Intelligent Storage Acceleration Library,
//! loaded at run time with `libloading` (`dlopen("libisal.so.2")`), so a
//! binary built here runs, on the portable backend, where ISA-L is not
//! installed. The raw FFI stays in this module.
//!
//! ISA-L codes with any coefficient matrix: `ec_init_tables` expands a
//! rows × K matrix into multiplication tables, and `ec_encode_data` computes
//! `rows` outputs from K inputs with them. Encoding uses the portable
//! code's parity matrix; reconstruction inverts the sub-matrix of K
//! surviving rows (`gf_invert_matrix`) and multiplies out the rows of the
//! missing fragments, so both backends give the same bytes.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::{Arc, Mutex, OnceLock};

use libloading::Library;

use super::portable::PortableCodec;
use super::EcError;

/// The soname loaded.
pub const LIBRARY: &str = "libisal.so.2";

type InitTables = unsafe extern "C" fn(c_int, c_int, *mut u8, *mut u8);
type EncodeData = unsafe extern "C" fn(c_int, c_int, c_int, *mut u8, *mut *mut u8, *mut *mut u8);
type InvertMatrix = unsafe extern "C" fn(*mut u8, *mut u8, c_int) -> c_int;
type GfMul = unsafe extern "C" fn(u8, u8) -> u8;

/// The loaded library and the four functions Stretto calls.
pub struct IsaL {
    init_tables: InitTables,
    encode_data: EncodeData,
    invert_matrix: InvertMatrix,
    gf_mul: GfMul,
    /// Keeps the functions above mapped; never dropped (held in a static).
    _lib: Library,
}

static LOADED: OnceLock<Result<IsaL, String>> = OnceLock::new();

/// ISA-L, loaded on first use; the error says why it cannot be used.
pub fn library() -> Result<&'static IsaL, EcError> {
    LOADED
        .get_or_init(load)
        .as_ref()
        .map_err(|e| EcError::Isal(e.clone()))
}

fn load() -> Result<IsaL, String> {
    // SAFETY: loading ISA-L runs no initialisers with requirements on us
    // (it is a plain C library with no constructors that take arguments).
    let lib =
        unsafe { Library::new(LIBRARY) }.map_err(|e| format!("cannot load {LIBRARY}: {e}"))?;
    // SAFETY: each symbol is looked up with the C prototype ISA-L 2.x
    // declares in <isa-l/erasure_code.h> and <isa-l/gf_vect_mul.h>; the
    // pointers are copied out and stay valid because `lib` is kept beside
    // them for the life of the process.
    unsafe {
        let init_tables = *lib
            .get::<InitTables>(b"ec_init_tables\0")
            .map_err(|e| e.to_string())?;
        let encode_data = *lib
            .get::<EncodeData>(b"ec_encode_data\0")
            .map_err(|e| e.to_string())?;
        let invert_matrix = *lib
            .get::<InvertMatrix>(b"gf_invert_matrix\0")
            .map_err(|e| e.to_string())?;
        let gf_mul = *lib.get::<GfMul>(b"gf_mul\0").map_err(|e| e.to_string())?;
        Ok(IsaL {
            init_tables,
            encode_data,
            invert_matrix,
            gf_mul,
            _lib: lib,
        })
    }
}

fn c_len(n: usize) -> Result<c_int, EcError> {
    c_int::try_from(n).map_err(|_| EcError::Isal(format!("{n} is too large for ISA-L")))
}

impl IsaL {
    /// `ec_init_tables`: multiplication tables (32 bytes per coefficient)
    /// for a `rows` × `k` matrix.
    pub fn init_tables(&self, k: usize, rows: usize, matrix: &[u8]) -> Result<Vec<u8>, EcError> {
        if matrix.len() != k * rows {
            return Err(EcError::Isal(format!(
                "matrix of {} bytes is not {rows} x {k}",
                matrix.len()
            )));
        }
        let mut tables = vec![0u8; 32 * k * rows];
        let mut m = matrix.to_vec();
        // SAFETY: `m` holds rows*k coefficients and `tables` 32*k*rows
        // bytes, the sizes ec_init_tables reads and writes.
        unsafe { (self.init_tables)(c_len(k)?, c_len(rows)?, m.as_mut_ptr(), tables.as_mut_ptr()) };
        Ok(tables)
    }

    /// `ec_encode_data`: `outputs[r] = sum_j matrix[r][j] * inputs[j]` with
    /// tables from [`IsaL::init_tables`] for `outputs.len()` × `inputs.len()`.
    pub fn encode_data(
        &self,
        tables: &[u8],
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
    ) -> Result<(), EcError> {
        let (k, rows) = (inputs.len(), outputs.len());
        let len = inputs.first().map_or(0, |i| i.len());
        if tables.len() != 32 * k * rows
            || inputs.iter().any(|i| i.len() != len)
            || outputs.iter().any(|o| o.len() != len)
        {
            return Err(EcError::Isal("buffers do not match the tables".into()));
        }
        if len == 0 || rows == 0 {
            return Ok(());
        }
        // ISA-L's prototype takes non-const pointers but only reads the
        // inputs and the tables.
        let mut ins: Vec<*mut u8> = inputs.iter().map(|i| i.as_ptr().cast_mut()).collect();
        let mut outs: Vec<*mut u8> = outputs.iter_mut().map(|o| o.as_mut_ptr()).collect();
        // SAFETY: `ins` has k pointers to `len` readable bytes, `outs` rows
        // pointers to `len` writable bytes that alias nothing else (they
        // come from distinct `&mut` slices), and `tables` has the 32*k*rows
        // bytes ec_init_tables made for this shape. ISA-L writes only the
        // outputs.
        unsafe {
            (self.encode_data)(
                c_len(len)?,
                c_len(k)?,
                c_len(rows)?,
                tables.as_ptr().cast_mut(),
                ins.as_mut_ptr(),
                outs.as_mut_ptr(),
            )
        };
        Ok(())
    }

    /// `gf_invert_matrix` of an n × n matrix; `None` if it is singular.
    pub fn invert(&self, matrix: &[u8], n: usize) -> Result<Option<Vec<u8>>, EcError> {
        if matrix.len() != n * n {
            return Err(EcError::Isal("matrix is not square".into()));
        }
        let mut input = matrix.to_vec();
        let mut out = vec![0u8; n * n];
        // SAFETY: both buffers hold n*n bytes; gf_invert_matrix reads and
        // scribbles on `input` (our copy) and writes `out`.
        let rc = unsafe { (self.invert_matrix)(input.as_mut_ptr(), out.as_mut_ptr(), c_len(n)?) };
        Ok((rc == 0).then_some(out))
    }

    /// `gf_mul` in GF(2^8) with polynomial 0x11d.
    pub fn mul(&self, a: u8, b: u8) -> u8 {
        // SAFETY: a pure function of two bytes.
        unsafe { (self.gf_mul)(a, b) }
    }
}

/// A K+M code on ISA-L, with the portable code's matrix.
pub struct IsalCodec {
    lib: &'static IsaL,
    data: usize,
    parity: usize,
    /// Parity rows (M × K).
    matrix: Vec<u8>,
    encode_tables: Vec<u8>,
    /// Decode tables per loss pattern (which fragments are present): a
    /// set that lost a brick decodes every stripe with the same ones.
    decode_tables: Mutex<HashMap<Vec<bool>, Arc<Vec<u8>>>>,
}

/// Loss patterns whose decode tables are kept (then the cache starts over).
const DECODE_CACHE: usize = 256;

impl IsalCodec {
    /// The code `portable` defines, computed by ISA-L.
    pub fn new(portable: &PortableCodec) -> Result<IsalCodec, EcError> {
        let lib = library()?;
        let (data, parity) = (portable.data, portable.parity);
        let encode_tables = lib.init_tables(data, parity, &portable.matrix)?;
        Ok(IsalCodec {
            lib,
            data,
            parity,
            matrix: portable.matrix.clone(),
            encode_tables,
            decode_tables: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn encode_into(
        &self,
        data: &[&[u8]],
        parity: &mut [&mut [u8]],
    ) -> Result<(), EcError> {
        self.lib.encode_data(&self.encode_tables, data, parity)
    }

    /// Generator row `r` (K coefficients): a unit row for data, a parity
    /// row after.
    fn row(&self, r: usize) -> Vec<u8> {
        let k = self.data;
        if r < k {
            (0..k).map(|j| u8::from(j == r)).collect()
        } else {
            self.matrix[(r - k) * k..(r - k + 1) * k].to_vec()
        }
    }

    /// Tables that compute the `missing` fragments from the `src` ones.
    fn decode_tables_for(&self, src: &[usize], missing: &[usize]) -> Result<Vec<u8>, EcError> {
        let k = self.data;
        // The data is D · (surviving fragments), D the inverse of their
        // generator rows; a missing fragment r is row_r · D · survivors.
        let sub: Vec<u8> = src.iter().flat_map(|&r| self.row(r)).collect();
        let inv = self.lib.invert(&sub, k)?.ok_or_else(|| EcError::Shape {
            data: k,
            parity: self.parity,
            reason: "the surviving rows are singular (not an MDS code?)".into(),
        })?;
        let mut decode = vec![0u8; missing.len() * k];
        for (n, &r) in missing.iter().enumerate() {
            let row = self.row(r);
            for j in 0..k {
                let mut acc = 0u8;
                for (l, &c) in row.iter().enumerate() {
                    acc ^= self.lib.mul(c, inv[l * k + j]);
                }
                decode[n * k + j] = acc;
            }
        }
        self.lib.init_tables(k, missing.len(), &decode)
    }

    pub(crate) fn reconstruct(
        &self,
        shards: &mut [Option<Vec<u8>>],
        len: usize,
    ) -> Result<(), EcError> {
        let k = self.data;
        let src: Vec<usize> = (0..shards.len())
            .filter(|&i| shards[i].is_some())
            .take(k)
            .collect();
        let missing: Vec<usize> = (0..shards.len()).filter(|&i| shards[i].is_none()).collect();
        let pattern: Vec<bool> = shards.iter().map(Option::is_some).collect();
        let cached = self
            .decode_tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pattern)
            .cloned();
        let tables = match cached {
            Some(t) => t,
            None => {
                let t = Arc::new(self.decode_tables_for(&src, &missing)?);
                let mut cache = self.decode_tables.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= DECODE_CACHE {
                    cache.clear();
                }
                cache.insert(pattern, t.clone());
                t
            }
        };
        let mut outs = vec![vec![0u8; len]; missing.len()];
        {
            let ins: Vec<&[u8]> = src.iter().filter_map(|&i| shards[i].as_deref()).collect();
            let mut o: Vec<&mut [u8]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
            self.lib.encode_data(&tables, &ins, &mut o)?;
        }
        for (r, v) in missing.into_iter().zip(outs) {
            shards[r] = Some(v);
        }
        Ok(())
    }
}
