//! A bounds-checked little-endian cursor over the bytes of a GGUF file.

pub(super) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn left(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!("truncated: needs {n} bytes at offset {}, only {} left", self.pos, self.left()));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u64-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: u64) -> Result<String, String> {
        let at = self.pos;
        let n = self.u64()?;
        if n > max || n > self.left() as u64 {
            return Err(format!("string length {n} at offset {at} exceeds the {} bytes left", self.left()));
        }
        let b = self.bytes(n as usize)?;
        String::from_utf8(b.to_vec()).map_err(|e| format!("string at offset {at} is not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
    }
}
