//! Real-process crash test: a writer process doing RVM transactions and
//! object writes + flushes is SIGKILLed at random moments, over and over.
//! After each kill the brick's storage is reopened (RVM recovery runs) and
//! everything the writer reported durable must be there byte for byte.
//!
//! The writer is this same test binary, re-executed with
//! `STRETTO_CRASH_WRITER=DIR` to run the ignored `writer_process` test.
//! It prints one line per durable fact on stdout:
//!
//! - `T run seq` — a transaction committed with `Flush` (its map record and its
//!   raw segment bytes are durable);
//! - `F run seq` — a store flush returned after object write `seq` (the write,
//!   its chunk metadata and every earlier `NoFlush` transaction are durable).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iobuf::IoBuf;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::chunkmeta::RvmChunkMeta;
use storage::objects::{ChunkId, Fid, ObjectStore, StoreOptions};
use storage::rvm::map::PMap;
use storage::rvm::{CommitMode, Rvm, RvmOptions};

const ENV: &str = "STRETTO_CRASH_WRITER";
/// RVM root slot of the writer's own map (the chunk metadata uses slot 1).
const WRITER_ROOT: u32 = 9;
/// Size of each object write.
const WRITE_LEN: usize = 12 * 1024;
/// Raw segment area where each transaction also stamps its id.
const RAW_AREA: u64 = 8 << 20;
const RAW_SLOTS: u64 = 1024;

fn rvm_opts() -> RvmOptions {
    RvmOptions {
        segment_size: 16 << 20,
        log_size: 4 << 20,
        ..RvmOptions::default()
    }
}

fn open_storage(dir: &Path) -> (Arc<Rvm>, ObjectStore, PMap) {
    let rvm_dir = dir.join("rvm");
    let rvm = if rvm_dir.join("rvm.seg").exists() {
        Rvm::open(&rvm_dir, &rvm_opts()).expect("rvm recovery")
    } else {
        std::fs::create_dir_all(&rvm_dir).unwrap();
        Rvm::create(&rvm_dir, &rvm_opts()).expect("rvm create")
    };
    let rvm = Arc::new(rvm);
    let meta = Arc::new(RvmChunkMeta::open(rvm.clone()).expect("chunk meta"));
    let map = PMap::open_or_create(&rvm, WRITER_ROOT).expect("writer map");
    let store = ObjectStore::open(dir, meta, StoreOptions::default()).expect("object store");
    (rvm, store, map)
}

/// The bytes of write `seq` of run `run` (distinct for every pair).
fn payload(run: u32, seq: u32) -> Vec<u8> {
    let mut x = (run as u64) << 32 | seq as u64 | 1;
    (0..WRITE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn chunk(run: u32, seq: u32) -> (ChunkId, u64) {
    let fid = Fid {
        volume: 1,
        vnode: run,
        unique: 1,
    };
    // Four chunks per run; writes never overlap, so every one is checkable.
    let id = ChunkId::new(fid, (seq % 4) as u64);
    // Slots of WRITE_LEN + 1 KiB, each write shifted by 0, 512 or 1024 bytes:
    // unaligned, yet never overlapping the next slot.
    (
        id,
        (seq / 4) as u64 * (WRITE_LEN as u64 + 1024) + (seq as u64 % 3) * 512,
    )
}

fn key(run: u32, seq: u32) -> Vec<u8> {
    format!("run{run}/seq{seq}").into_bytes()
}

fn raw_slot(run: u32, seq: u32) -> u64 {
    RAW_AREA + ((run as u64 * 7919 + seq as u64) % RAW_SLOTS) * 16
}

/// The child: loops forever writing; killed by the parent.
#[test]
#[ignore = "child process of writer_survives_sigkill; run by that test"]
fn writer_process() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let run: u32 = std::env::var("STRETTO_CRASH_RUN").unwrap().parse().unwrap();
    let (rvm, store, map) = open_storage(Path::new(&dir));
    let out = std::io::stdout();
    let mut seq = 0u32;
    loop {
        // An object write of a known pattern.
        let (id, off) = chunk(run, seq);
        let (res, _) = store
            .write(id, off, IoBuf::from_slice(&payload(run, seq)))
            .wait();
        res.expect("write");
        // A transaction recording it: a map record and raw segment bytes.
        let mut tx = rvm.begin();
        map.insert(&mut tx, &key(run, seq), &payload(run, seq)[..64])
            .unwrap();
        let mut stamp = [0u8; 16];
        stamp[..4].copy_from_slice(&run.to_le_bytes());
        stamp[4..8].copy_from_slice(&seq.to_le_bytes());
        stamp[8..16].copy_from_slice(&(run as u64 * 31 + seq as u64).to_le_bytes());
        tx.write(raw_slot(run, seq), &stamp).unwrap();
        let flush_tx = seq % 3 == 0;
        tx.commit(if flush_tx {
            CommitMode::Flush
        } else {
            CommitMode::NoFlush
        })
        .unwrap();
        if flush_tx {
            writeln!(out.lock(), "T {run} {seq}").unwrap();
        }
        if seq % 4 == 3 {
            store.flush().wait().expect("flush");
            writeln!(out.lock(), "F {run} {seq}").unwrap();
        }
        out.lock().flush().unwrap();
        seq += 1;
    }
}

struct Durable {
    /// Transactions committed with Flush: (run, seq).
    txs: Vec<(u32, u32)>,
    /// The highest seq covered by a store flush, per run.
    flushed: Vec<(u32, u32)>,
}

fn verify(dir: &Path, d: &Durable, only_run: Option<u32>) {
    let (rvm, store, map) = open_storage(dir);
    for &(run, seq) in d
        .txs
        .iter()
        .filter(|(r, _)| only_run.is_none_or(|o| o == *r))
    {
        let rec = map.get(&*rvm, &key(run, seq)).unwrap();
        assert_eq!(
            rec.as_deref(),
            Some(&payload(run, seq)[..64]),
            "run {run}: Flush-committed transaction {seq} lost"
        );
    }
    for &(run, upto) in d
        .flushed
        .iter()
        .filter(|(r, _)| only_run.is_none_or(|o| o == *r))
    {
        for seq in 0..=upto {
            let (id, off) = chunk(run, seq);
            let mut buf = IoBuf::alloc(WRITE_LEN);
            buf.set_len(WRITE_LEN);
            let (res, buf) = store.read(id, off, buf).wait();
            res.unwrap();
            assert!(
                buf.as_slice() == payload(run, seq).as_slice(),
                "run {run}: flushed write {seq} not intact"
            );
            let meta = store.stat(id).unwrap().expect("chunk metadata");
            assert!(meta.size >= off + WRITE_LEN as u64, "run {run}: size lost");
            // Every transaction before a flush is durable too (NoFlush ones).
            assert!(
                map.get(&*rvm, &key(run, seq)).unwrap().is_some(),
                "run {run}: transaction {seq} lost though a later flush returned"
            );
        }
    }
    drop(store);
    // Leave the RVM as a crash would not: closing applies the log; that is fine,
    // the next run recovers either way.
    drop(rvm);
}

#[test]
fn writer_survives_sigkill() {
    let kills: u32 = std::env::var("STRETTO_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let dir = tmp.path();
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(0xC0FFEE);
    let mut all = Durable {
        txs: Vec::new(),
        flushed: Vec::new(),
    };
    let mut total_facts = 0usize;
    for run in 1..=kills {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "writer_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV, dir)
            .env("STRETTO_CRASH_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let facts = Arc::new(Mutex::new(Durable {
            txs: Vec::new(),
            flushed: Vec::new(),
        }));
        let f2 = facts.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut w = line.split_whitespace();
                let (Some(kind), Some(r), Some(s)) = (w.next(), w.next(), w.next()) else {
                    continue;
                };
                let (Ok(r), Ok(s)) = (r.parse::<u32>(), s.parse::<u32>()) else {
                    continue;
                };
                let mut f = f2.lock().unwrap();
                match kind {
                    "T" => f.txs.push((r, s)),
                    "F" => f.flushed.push((r, s)),
                    _ => {}
                }
            }
        });
        // Kill at a random moment: sometimes during start-up and recovery,
        // mostly in the middle of writing.
        let wait_ms = if rng.gen_bool(0.1) {
            rng.gen_range(0..15)
        } else {
            rng.gen_range(15..120)
        };
        std::thread::sleep(Duration::from_millis(wait_ms));
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = child.wait();
        reader.join().unwrap();
        let facts = Arc::try_unwrap(facts).ok().unwrap().into_inner().unwrap();
        total_facts += facts.txs.len() + facts.flushed.len();
        // Only what the child printed before it died counts: a line that was
        // printed was printed after its durability point.
        verify(dir, &facts, Some(run));
        all.txs.extend(facts.txs);
        if let Some(max) = facts.flushed.iter().map(|(_, s)| *s).max() {
            all.flushed.push((run, max));
        }
    }
    // At the end every run's durable facts are still there.
    verify(dir, &all, None);
    assert!(
        total_facts > kills as usize,
        "the writer reported too few durable facts ({total_facts}) for the test to mean anything"
    );
    println!("{kills} kills, {total_facts} durable facts verified");
}
