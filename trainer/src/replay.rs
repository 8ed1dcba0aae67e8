//! Uniform replay buffer shared by every agent.
//!
//! Stores `(obs, action, reward, next_obs, terminated)` as f32 rows in plain `Vec`s that
//! grow up to `capacity` and then overwrite the oldest row (a ring). Actions are in the
//! agents' normalized units, [-1, 1]^d (scaled to the env's bounds only at the env).
//! `terminated` is the MDP's end; a time-limit truncation is stored as *not* terminated,
//! with the episode's true final observation as `next_obs`, so targets bootstrap
//! through it (DESIGN §4).
//!
//! Sampling draws indices from a caller-supplied RNG and gathers the rows into tch
//! tensors; the buffer saves to and loads from one little-endian binary file for resume.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use rand::Rng;
use tch::{Device, Tensor};

/// One minibatch: `obs [B, obs]`, `act [B, act]`, `rew [B, 1]`, `next_obs [B, obs]`,
/// `term [B, 1]` (1.0 where the transition terminated the MDP).
pub struct Batch {
    pub obs: Tensor,
    pub act: Tensor,
    pub rew: Tensor,
    pub next_obs: Tensor,
    pub term: Tensor,
}

impl Batch {
    /// `rows` zero rows on `device`: fixed tensors to copy or gather minibatches into.
    pub fn zeros(rows: usize, obs_dim: usize, act_dim: usize, device: Device) -> Self {
        let zeros =
            |width: usize| Tensor::zeros([rows as i64, width as i64], (tch::Kind::Float, device));
        Self {
            obs: zeros(obs_dim),
            act: zeros(act_dim),
            rew: zeros(1),
            next_obs: zeros(obs_dim),
            term: zeros(1),
        }
    }

    /// The five tensors in the order of [`ReplayBuffer::columns`].
    pub fn fields(&self) -> [&Tensor; 5] {
        [&self.obs, &self.act, &self.rew, &self.next_obs, &self.term]
    }
}

pub struct ReplayBuffer {
    pub obs_dim: usize,
    pub act_dim: usize,
    pub capacity: usize,
    /// Next row to overwrite once full.
    pos: usize,
    /// Transitions pushed since this buffer was made or loaded (not saved): how a
    /// [`DeviceReplay`] knows which rows are new.
    pushes: u64,
    obs: Vec<f32>,
    act: Vec<f32>,
    rew: Vec<f32>,
    next_obs: Vec<f32>,
    term: Vec<f32>,
}

const MAGIC: &[u8; 8] = b"FLREPLY1";
/// Magic and five u64 header words (obs_dim, act_dim, capacity, len, pos).
const HEADER_BYTES: usize = 8 + 5 * 8;
/// Largest observation or action width a replay file may declare (Humanoid's 348
/// observations with room to spare); anything above is a damaged header.
const MAX_DIM: usize = 1 << 16;

impl ReplayBuffer {
    pub fn new(obs_dim: usize, act_dim: usize, capacity: usize) -> Self {
        assert!(capacity > 0, "replay capacity must be positive");
        Self {
            obs_dim,
            act_dim,
            capacity,
            pos: 0,
            pushes: 0,
            obs: Vec::new(),
            act: Vec::new(),
            rew: Vec::new(),
            next_obs: Vec::new(),
            term: Vec::new(),
        }
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.rew.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rew.is_empty()
    }

    /// Adds one transition (overwriting the oldest when full).
    pub fn push(&mut self, obs: &[f32], act: &[f32], rew: f32, next_obs: &[f32], term: bool) {
        debug_assert_eq!(obs.len(), self.obs_dim);
        debug_assert_eq!(next_obs.len(), self.obs_dim);
        debug_assert_eq!(act.len(), self.act_dim);
        let term = if term { 1.0 } else { 0.0 };
        if self.len() < self.capacity {
            self.obs.extend_from_slice(obs);
            self.act.extend_from_slice(act);
            self.rew.push(rew);
            self.next_obs.extend_from_slice(next_obs);
            self.term.push(term);
        } else {
            let (i, o, a) = (self.pos, self.obs_dim, self.act_dim);
            self.obs[i * o..(i + 1) * o].copy_from_slice(obs);
            self.act[i * a..(i + 1) * a].copy_from_slice(act);
            self.rew[i] = rew;
            self.next_obs[i * o..(i + 1) * o].copy_from_slice(next_obs);
            self.term[i] = term;
        }
        self.pos = (self.pos + 1) % self.capacity;
        self.pushes += 1;
    }

    /// `batch` rows drawn uniformly with replacement (as CleanRL's buffer does).
    pub fn sample(&self, batch: usize, rng: &mut impl Rng, device: Device) -> Batch {
        self.gather(&self.sample_indices(batch, rng), device)
    }

    /// The row indices [`ReplayBuffer::sample`] gathers, drawn the same way.
    pub fn sample_indices(&self, batch: usize, rng: &mut impl Rng) -> Vec<usize> {
        assert!(!self.is_empty(), "sampling an empty replay buffer");
        (0..batch)
            .map(|_| rng.random_range(0..self.len()))
            .collect()
    }

    /// The rows `idx` as a batch.
    pub fn gather(&self, idx: &[usize], device: Device) -> Batch {
        let rows = |data: &[f32], dim: usize| {
            let mut out = Vec::with_capacity(idx.len() * dim);
            for &i in idx {
                out.extend_from_slice(&data[i * dim..(i + 1) * dim]);
            }
            Tensor::from_slice(&out)
                .view([idx.len() as i64, dim as i64])
                .to_device(device)
        };
        let [obs, act, rew, next_obs, term] = self.columns().map(|(data, dim)| rows(data, dim));
        Batch {
            obs,
            act,
            rew,
            next_obs,
            term,
        }
    }

    /// The stored rows of each column with its width, in the order of [`Batch::fields`].
    fn columns(&self) -> [(&[f32], usize); 5] {
        [
            (&self.obs, self.obs_dim),
            (&self.act, self.act_dim),
            (&self.rew, 1),
            (&self.next_obs, self.obs_dim),
            (&self.term, 1),
        ]
    }

    /// Up to `n` stored observations, evenly spaced (for calibration sets).
    pub fn observations(&self, n: usize) -> Vec<Vec<f32>> {
        let len = self.len();
        let n = n.min(len);
        (0..n)
            .map(|k| {
                let i = k * len / n.max(1);
                self.obs[i * self.obs_dim..(i + 1) * self.obs_dim].to_vec()
            })
            .collect()
    }

    /// Writes the buffer (header, then the filled rows of each array, f32 LE).
    pub fn save(&self, path: &Path) -> Result<()> {
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(MAGIC)?;
        for v in [
            self.obs_dim,
            self.act_dim,
            self.capacity,
            self.len(),
            self.pos,
        ] {
            w.write_all(&(v as u64).to_le_bytes())?;
        }
        for (data, _) in self.columns() {
            for v in data {
                w.write_all(&v.to_le_bytes())?;
            }
        }
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        ensure!(
            &magic == MAGIC,
            "{} is not a replay buffer file",
            path.display()
        );
        let mut header = [0usize; 5];
        for h in &mut header {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            *h = u64::from_le_bytes(b) as usize;
        }
        let [obs_dim, act_dim, capacity, len, pos] = header;
        let corrupt =
            |why: String| anyhow::anyhow!("{}: corrupt replay header: {why}", path.display());
        if obs_dim == 0 || act_dim == 0 || obs_dim > MAX_DIM || act_dim > MAX_DIM {
            return Err(corrupt(format!(
                "dimensions obs {obs_dim}, act {act_dim} (each must be 1..={MAX_DIM})"
            )));
        }
        if capacity == 0 || len > capacity || pos >= capacity || (len < capacity && pos != len) {
            return Err(corrupt(format!(
                "capacity {capacity}, {len} rows, next row {pos}"
            )));
        }
        // The rows the header announces must be exactly what the file holds: checked
        // before anything is allocated, so a damaged header cannot ask for gigabytes.
        let expected = (2 * obs_dim + act_dim + 2)
            .checked_mul(len)
            .and_then(|floats| floats.checked_mul(4))
            .and_then(|bytes| bytes.checked_add(HEADER_BYTES))
            .ok_or_else(|| {
                corrupt(format!(
                    "{len} rows of obs {obs_dim}, act {act_dim} overflow"
                ))
            })?;
        let actual = r.get_ref().metadata()?.len();
        if actual != expected as u64 {
            return Err(corrupt(format!(
                "{len} rows of obs {obs_dim}, act {act_dim} take {expected} bytes, the file has {actual}"
            )));
        }
        let mut read = |n: usize| -> Result<Vec<f32>> {
            let mut bytes = vec![0u8; n * 4];
            r.read_exact(&mut bytes)
                .with_context(|| format!("{}: truncated replay file", path.display()))?;
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        Ok(Self {
            obs_dim,
            act_dim,
            capacity,
            pos,
            pushes: 0,
            obs: read(len * obs_dim)?,
            act: read(len * act_dim)?,
            rew: read(len)?,
            next_obs: read(len * obs_dim)?,
            term: read(len)?,
        })
    }
}

/// A copy of a replay buffer's rows on a device, from which minibatches are gathered there
/// by row index: under `--cuda-graph` only a minibatch's indices cross to the device,
/// and the gather is part of the recorded update. Kept up to date by
/// [`DeviceReplay::sync`], which copies the rows pushed since the last call.
pub struct DeviceReplay {
    /// Every row of the buffer: `[capacity, width]` each.
    rows: Batch,
    /// The host buffer's `pushes` at the last sync (None: never synced).
    synced: Option<u64>,
}

impl DeviceReplay {
    /// Room for every row of `host` on `device` (nothing copied yet).
    pub fn new(host: &ReplayBuffer, device: Device) -> Self {
        Self {
            rows: Batch::zeros(host.capacity, host.obs_dim, host.act_dim, device),
            synced: None,
        }
    }

    /// Copies the rows `host` gained (or overwrote) since the last sync; everything on the
    /// first sync, or when more rows than the capacity were pushed in between.
    pub fn sync(&mut self, host: &ReplayBuffer) {
        let (len, cap) = (host.len(), host.capacity);
        let new = match self.synced {
            Some(synced) if host.pushes - synced < cap as u64 => (host.pushes - synced) as usize,
            _ => len,
        };
        // The `new` most recent rows end just before `host.pos` (mod capacity), in at
        // most two contiguous ranges.
        let end = if len < cap { len } else { host.pos };
        let ranges = if new <= end {
            [(end - new, new), (0, 0)]
        } else {
            [(cap - (new - end), new - end), (0, end)]
        };
        tch::no_grad(|| {
            for (column, (data, width)) in self.rows.fields().into_iter().zip(host.columns()) {
                for (start, n) in ranges.into_iter().filter(|&(_, n)| n > 0) {
                    let rows = Tensor::from_slice(&data[start * width..(start + n) * width])
                        .view([n as i64, width as i64]);
                    column.narrow(0, start as i64, n as i64).copy_(&rows);
                }
            }
        });
        self.synced = Some(host.pushes);
    }

    /// Gathers the rows `indices` (int64 `[B]` on the device) into `batch`'s tensors, in
    /// place: no host involvement, so a CUDA graph can record it.
    pub fn gather_into(&self, indices: &Tensor, batch: &Batch) {
        tch::no_grad(|| {
            for (column, out) in self.rows.fields().into_iter().zip(batch.fields()) {
                let _ = column.index_select_out(out, 0, indices);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The device copy gathers exactly the host's minibatch, through filling, the first
    /// overwrite, wrap-arounds, syncs after one push or after more pushes than the
    /// capacity, and a loaded buffer (its push count restarts).
    #[test]
    fn device_copy_gathers_the_host_rows() {
        let capacity = 7;
        let mut rb = ReplayBuffer::new(2, 1, capacity);
        let mut copy = DeviceReplay::new(&rb, Device::Cpu);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut k = 0usize;
        let check = |rb: &ReplayBuffer, copy: &DeviceReplay, rng: &mut rand::rngs::StdRng| {
            let idx = rb.sample_indices(32, rng);
            let expected = rb.gather(&idx, Device::Cpu);
            let got = rb.gather(&vec![0; idx.len()], Device::Cpu);
            let indices = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
            copy.gather_into(&indices, &got);
            for (g, e) in [
                (&got.obs, &expected.obs),
                (&got.act, &expected.act),
                (&got.rew, &expected.rew),
                (&got.next_obs, &expected.next_obs),
                (&got.term, &expected.term),
            ] {
                assert!(g.equal(e), "{g} vs {e}");
            }
        };
        for pushes in [3, 1, 2, 4, 1, 9, 6, 7, 2] {
            for _ in 0..pushes {
                push_row(&mut rb, k);
                k += 1;
            }
            copy.sync(&rb);
            check(&rb, &copy, &mut rng);
        }
        let path = std::env::temp_dir().join(format!("device-replay-{}.bin", std::process::id()));
        rb.save(&path).unwrap();
        let mut loaded = ReplayBuffer::load(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut copy = DeviceReplay::new(&loaded, Device::Cpu);
        copy.sync(&loaded);
        check(&loaded, &copy, &mut rng);
        loaded.push(&[1.5, 2.5], &[0.5], 3.0, &[4.5, 5.5], true);
        copy.sync(&loaded);
        check(&loaded, &copy, &mut rng);
    }

    /// Pushes row `k` of the tests' sequence (distinct values in every column).
    fn push_row(rb: &mut ReplayBuffer, k: usize) {
        let x = k as f32;
        rb.push(
            &[x, -x],
            &[x / 100.0],
            10.0 * x,
            &[x + 0.5, -x - 0.5],
            k.is_multiple_of(3),
        );
    }

    fn filled(capacity: usize, n: usize) -> ReplayBuffer {
        let mut rb = ReplayBuffer::new(2, 1, capacity);
        for k in 0..n {
            push_row(&mut rb, k);
        }
        rb
    }

    #[test]
    fn samples_are_consistent_rows_and_cover_the_buffer() {
        let rb = filled(100, 40);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let b = rb.sample(4096, &mut rng, Device::Cpu);
        let obs = Vec::<f32>::try_from(b.obs.view([-1])).unwrap();
        let act = Vec::<f32>::try_from(b.act.view([-1])).unwrap();
        let rew = Vec::<f32>::try_from(b.rew.view([-1])).unwrap();
        let next = Vec::<f32>::try_from(b.next_obs.view([-1])).unwrap();
        let term = Vec::<f32>::try_from(b.term.view([-1])).unwrap();
        let mut seen = [false; 40];
        for j in 0..4096 {
            let x = obs[2 * j];
            let k = x as usize;
            seen[k] = true;
            assert_eq!(obs[2 * j + 1], -x);
            assert_eq!(act[j], x / 100.0);
            assert_eq!(rew[j], 10.0 * x);
            assert_eq!(next[2 * j], x + 0.5);
            assert_eq!(term[j], if k.is_multiple_of(3) { 1.0 } else { 0.0 });
        }
        assert!(
            seen.iter().all(|&s| s),
            "uniform sampling reaches every row"
        );
    }

    #[test]
    fn ring_overwrites_the_oldest_rows() {
        let rb = filled(10, 25);
        assert_eq!(rb.len(), 10);
        let b = rb.gather(&(0..10).collect::<Vec<_>>(), Device::Cpu);
        let mut xs = Vec::<f32>::try_from(b.rew.view([-1])).unwrap();
        xs.sort_by(f32::total_cmp);
        assert_eq!(xs, (15..25).map(|k| 10.0 * k as f32).collect::<Vec<_>>());
    }

    #[test]
    fn save_load_round_trip_is_exact() {
        let rb = filled(10, 13);
        let path = std::env::temp_dir().join(format!("replay-rt-{}.bin", std::process::id()));
        rb.save(&path).unwrap();
        let back = ReplayBuffer::load(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(
            (back.len(), back.pos, back.capacity),
            (rb.len(), rb.pos, rb.capacity)
        );
        assert_eq!(back.obs, rb.obs);
        assert_eq!(back.act, rb.act);
        assert_eq!(back.rew, rb.rew);
        assert_eq!(back.next_obs, rb.next_obs);
        assert_eq!(back.term, rb.term);
        let mut a = rand::rngs::StdRng::seed_from_u64(5);
        let mut b = rand::rngs::StdRng::seed_from_u64(5);
        let x = rb.sample(8, &mut a, Device::Cpu);
        let y = back.sample(8, &mut b, Device::Cpu);
        assert!(x.obs.equal(&y.obs) && x.next_obs.equal(&y.next_obs));
    }

    /// A damaged header gets one line naming the file and what is wrong, never an
    /// arithmetic overflow or a huge allocation: dimension words overwritten with 0xff,
    /// a row count far beyond the file, a truncated and an extended file, a `pos` that
    /// contradicts a partly filled buffer.
    #[test]
    fn damaged_headers_are_refused_with_the_reason() {
        let rb = filled(10, 7);
        let path = std::env::temp_dir().join(format!("replay-bad-{}.bin", std::process::id()));
        rb.save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let word = |bytes: &mut Vec<u8>, k: usize, v: u64| {
            bytes[8 + 8 * k..16 + 8 * k].copy_from_slice(&v.to_le_bytes())
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            {
                let mut b = good.clone();
                b[8..24].fill(0xff);
                (b, "dimensions obs")
            },
            {
                let mut b = good.clone();
                word(&mut b, 2, u64::MAX);
                word(&mut b, 3, 1 << 40);
                word(&mut b, 4, 1 << 40);
                (b, "take")
            },
            {
                let mut b = good.clone();
                word(&mut b, 2, u64::MAX);
                word(&mut b, 3, u64::MAX / 2);
                word(&mut b, 4, u64::MAX / 2);
                (b, "overflow")
            },
            (good[..good.len() - 3].to_vec(), "the file has"),
            ([good.clone(), vec![0; 4]].concat(), "the file has"),
            {
                let mut b = good.clone();
                word(&mut b, 4, 3);
                (b, "next row 3")
            },
        ];
        for (bytes, reason) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = format!("{:#}", ReplayBuffer::load(&path).err().expect("refused"));
            assert!(
                err.contains("corrupt replay header") && err.contains(reason),
                "{reason}: {err}"
            );
        }
        std::fs::remove_file(&path).ok();
    }
}
