//! Reading structured choices out of fuzzer bytes. Running out of bytes yields zeros and empty
//! slices, so every input means something.

/// A cursor over fuzzer bytes.
#[derive(Debug)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }

    /// Up to `n` bytes (fewer if the input ends).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    /// A chunk whose length is a `u16` read first.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.take(n)
    }

    /// Bytes of a short length read first (0..=63).
    pub fn short_bytes(&mut self) -> Vec<u8> {
        let n = (self.u8() & 63) as usize;
        self.take(n).to_vec()
    }

    /// A short string (the bytes, made valid UTF-8).
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(&self.short_bytes()).into_owned()
    }

    pub fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.bool().then(|| f(self))
    }

    /// A short list (0..=7 items).
    pub fn list<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.u8() & 7;
        (0..n).map(|_| f(self)).collect()
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

/// Cuts `bytes` into the chunks a stream might deliver them in, as `mode` says: its low two bits
/// pick whole (one chunk), one byte at a time, 1..=16-byte chunks or 1..=4096-byte chunks; the
/// other bits seed the chunk sizes. Deterministic, so a crash reproduces from its input.
pub fn split_points(len: usize, mode: u8) -> Vec<usize> {
    let max_chunk = match mode & 3 {
        0 => return vec![len],
        1 => 1,
        2 => 16,
        _ => 4096,
    };
    let mut state = u64::from(mode) ^ ((len as u64) << 8) ^ 0x9e37_79b9_7f4a_7c15;
    let mut ends = Vec::new();
    let mut at = 0;
    while at < len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        at = (at + 1 + (z % max_chunk) as usize).min(len);
        ends.push(at);
    }
    ends
}

/// `bytes` cut at [`split_points`].
pub fn chunks(bytes: &[u8], mode: u8) -> Vec<&[u8]> {
    let mut start = 0;
    split_points(bytes.len(), mode)
        .into_iter()
        .map(|end| {
            let chunk = &bytes[start..end];
            start = end;
            chunk
        })
        .collect()
}
