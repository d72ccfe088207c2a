//! Just enough of the protobuf wire format for ONNX files: the fields of a message in order
//! (each with its own bytes, so that an edit can copy what it does not touch), and a writer.
//! The engine uses it to move attention nodes onto its own kernel; `codegen bench engine`
//! to count a graph's weights and to write the one-node graphs it times.

/// One field's value on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed 32- or 64-bit value (read as bits).
    Fixed(u64),
}

/// The bytes are not a protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {at}: {what}")]
pub struct Malformed {
    pub at: usize,
    pub what: &'static str,
}

/// The fields of one message, in order, as (field number, value).
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The fields of the message in `buf`.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, pos: 0 }
}

/// The fields of the message in `buf`, each with its bytes (tag included).
pub fn spans(buf: &[u8]) -> impl Iterator<Item = Result<(u32, Value<'_>, &[u8]), Malformed>> {
    let mut f = fields(buf);
    std::iter::from_fn(move || {
        let (buf, start) = (f.buf, f.pos);
        let next = f.next()?;
        Some(next.map(|(n, v)| (n, v, &buf[start..f.pos])))
    })
}

impl<'a> Fields<'a> {
    fn bad(&self, what: &'static str) -> Malformed {
        Malformed { at: self.pos, what }
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| self.bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.bad("field runs past its message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> Result<(u32, Value<'a>), Malformed> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| self.bad("field number"))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed(u64::from_le_bytes(
                self.take(8)?.try_into().unwrap_or([0; 8]),
            )),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| self.bad("length"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed(u64::from(u32::from_le_bytes(
                self.take(4)?.try_into().unwrap_or([0; 4]),
            ))),
            _ => return Err(self.bad("unknown wire type")),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            self.pos = self.buf.len();
        }
        Some(r)
    }
}

/// A repeated int64 field's values, packed (one length-delimited run) or not (one varint).
pub fn ints(v: Value<'_>) -> Result<Vec<i64>, Malformed> {
    match v {
        Value::Varint(n) => Ok(vec![n as i64]),
        Value::Bytes(b) => {
            let mut f = fields(b);
            let mut out = Vec::new();
            while f.pos < b.len() {
                out.push(f.varint()? as i64);
            }
            Ok(out)
        }
        Value::Fixed(_) => Err(Malformed {
            at: 0,
            what: "a fixed-width value where an integer was expected",
        }),
    }
}

/// A string field's text.
pub fn text(v: Value<'_>) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// A protobuf message being written.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// An integer field (varint).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.varint(u64::from(field) << 3);
        self.varint(v as u64);
        self
    }

    /// A float field (fixed 32 bits).
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.varint((u64::from(field) << 3) | 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A bytes or string field.
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    /// A nested message, written by `f`.
    pub fn msg(&mut self, field: u32, f: impl FnOnce(&mut Writer)) -> &mut Self {
        let mut inner = Writer::default();
        f(&mut inner);
        self.bytes(field, &inner.0)
    }

    /// Bytes already encoded (a field copied as it was).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_fields_read_back() {
        let mut w = Writer::default();
        w.int(1, 300).bytes(2, b"abc").msg(3, |m| {
            m.int(1, 7);
        });
        w.float(4, 1.5);
        let got: Vec<_> = fields(&w.0).collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0], (1, Value::Varint(300)));
        assert_eq!(got[1], (2, Value::Bytes(b"abc")));
        let Value::Bytes(inner) = got[2].1 else {
            panic!("not bytes")
        };
        assert_eq!(
            fields(inner).next().unwrap().unwrap(),
            (1, Value::Varint(7))
        );
        assert_eq!(got[3], (4, Value::Fixed(u64::from(1.5f32.to_bits()))));
        // Each field's own bytes, back to back, are the message.
        let whole: Vec<u8> = spans(&w.0).flat_map(|s| s.unwrap().2.to_vec()).collect();
        assert_eq!(whole, w.0);
        // packed repeated ints: 3, 270
        assert_eq!(ints(Value::Bytes(&[3, 0x8e, 0x02])).unwrap(), vec![3, 270]);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut w = Writer::default();
        w.bytes(2, b"abcdef");
        let cut = &w.0[..4];
        assert!(fields(cut).any(|f| f.is_err()));
        assert_eq!(
            fields(&[0x80]).next().unwrap(),
            Err(Malformed {
                at: 1,
                what: "truncated varint"
            })
        );
    }
}
