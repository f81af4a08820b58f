//! nekhebet-core canonical JSON, byte for byte.
//!
//! nekhebet-core 4.0.0 signs and hashes `json.dumps(obj, sort_keys=True,
//! separators=(",", ":"), ensure_ascii=False, allow_nan=False)` of the Python objects
//! msgspec decoded from the wire. Reproducing that needs the *Python* view of a JSON
//! document, which serde_json does not give us:
//! - a number without fraction or exponent is a Python `int` of any size (`-0` is `0`),
//!   anything else is an IEEE double printed with `float.__repr__`;
//! - object keys are sorted by code point (UTF-8 byte order is the same order);
//! - strings escape only `"`, `\` and C0 controls.
//!
//! So this module carries its own small JSON parser ([`parse`]) that keeps number text,
//! rejects what msgspec rejects (and duplicate keys, which msgspec silently collapses),
//! and never recurses deeper than [`MAX_NESTING`]. The same tree feeds the canonical
//! writer and the msgspec-compatible wire writer used by `signing`.

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::envelope::Header;

/// Deepest container nesting the parser accepts anywhere in a document.
///
/// msgspec's limit is Python's recursion limit (about 1,000 levels, minus the caller's
/// stack); the payload itself may only be 16 deep, so 256 leaves ample room for
/// `context`/`extensions` while keeping the recursive parser and writers far from any
/// thread's stack limit.
pub const MAX_NESTING: usize = 256;

/// Longest integer literal (sign included) msgspec decodes: CPython refuses to convert
/// integers of more than 4,300 digits (`sys.int_info.default_max_str_digits`), and
/// msgspec counts the minus sign in that length.
pub const MAX_INT_LITERAL_LEN: usize = 4300;

/// Objects up to this many members get their duplicate keys checked by a linear scan.
const SMALL_OBJECT: usize = 16;

/// A parsed JSON value, in the shape Python would hold it.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer literal exactly as written (no fraction, no exponent); arbitrary size.
    Int(&'a str),
    /// A number with a fraction or exponent: a finite IEEE double.
    Float(f64),
    /// A string with escapes resolved (borrowed when the wire form had none).
    Str(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object, members in document order; keys are unique.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    /// JSON type name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "bool",
            Json::Int(_) => "int",
            Json::Float(_) => "float",
            Json::Str(_) => "str",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }
}

/// Why a document is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The input ended where more JSON was required (empty or truncated input).
    #[error("JSON input ends unexpectedly at byte {offset}")]
    Truncated {
        /// Byte offset of the end of input.
        offset: usize,
    },
    /// A syntax rule of RFC 8259 (or msgspec's stricter reading of it) is broken.
    #[error("malformed JSON at byte {offset}: {what}")]
    Syntax {
        /// Byte offset of the offending character.
        offset: usize,
        /// Which rule.
        what: &'static str,
    },
    /// Containers are nested deeper than [`MAX_NESTING`].
    #[error("JSON nesting exceeds {limit} levels at byte {offset}")]
    TooDeep {
        /// Byte offset of the container that went too deep.
        offset: usize,
        /// The limit.
        limit: usize,
    },
    /// An object has the same key twice (after unescaping).
    #[error("duplicate object key {key:?} in the object at byte {offset}")]
    DuplicateKey {
        /// Byte offset of the object.
        offset: usize,
        /// The repeated key.
        key: String,
    },
    /// A float overflows to infinity, or an integer literal is longer than
    /// [`MAX_INT_LITERAL_LEN`]; msgspec refuses both.
    #[error("number out of range at byte {offset}")]
    NumberOutOfRange {
        /// Byte offset of the number.
        offset: usize,
    },
}

/// Why canonicalization failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// The input is not acceptable JSON.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// nekhebet-core canonicalizes dicts only (payload, context, extensions).
    #[error("expected a JSON object, got {found}")]
    NotAnObject {
        /// JSON type found.
        found: &'static str,
    },
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// Parses one JSON document (surrounding whitespace allowed, nothing else).
pub fn parse(text: &str) -> Result<Json<'_>, ParseError> {
    let mut p = Parser::new(text);
    let v = p.parse_value()?;
    p.finish()?;
    Ok(v)
}

/// A recursive-descent JSON parser over a `&str` (so UTF-8 is already known valid).
///
/// Exposed to the crate so the envelope decoder can walk the top-level and header
/// objects itself and note the byte span of the payload without building it twice.
pub(crate) struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Parser {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            depth: 0,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn truncated(&self) -> ParseError {
        ParseError::Truncated {
            offset: self.bytes.len(),
        }
    }

    fn syntax(&self, what: &'static str) -> ParseError {
        if self.pos >= self.bytes.len() {
            self.truncated()
        } else {
            ParseError::Syntax {
                offset: self.pos,
                what,
            }
        }
    }

    pub(crate) fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Next non-whitespace byte, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    /// Requires only whitespace to remain.
    pub(crate) fn finish(&mut self) -> Result<(), ParseError> {
        self.skip_ws();
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(ParseError::Syntax {
                offset: self.pos,
                what: "trailing characters after the JSON value",
            })
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ParseError::TooDeep {
                offset: self.pos,
                limit: MAX_NESTING,
            });
        }
        Ok(())
    }

    /// Parses any value (leading whitespace allowed).
    pub(crate) fn parse_value(&mut self) -> Result<Json<'a>, ParseError> {
        match self.peek() {
            None => Err(self.truncated()),
            Some(b'{') => self.parse_object(),
            Some(b'[') => self.parse_array(),
            Some(b'"') => Ok(Json::Str(self.parse_string()?)),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(_) => Err(self.syntax("invalid character")),
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Json<'a>) -> Result<Json<'a>, ParseError> {
        for &w in word {
            match self.bytes.get(self.pos) {
                None => return Err(self.truncated()),
                Some(&b) if b == w => self.pos += 1,
                Some(_) => return Err(self.syntax("invalid literal")),
            }
        }
        Ok(v)
    }

    /// Walks an object starting at its `{`, handing each member's key to `member`, which
    /// must consume the value. Duplicate keys are rejected here, so every caller gets
    /// that rule.
    pub(crate) fn parse_object_with<E: From<ParseError>>(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.pos;
        debug_assert_eq!(self.bytes.get(self.pos), Some(&b'{'));
        self.pos += 1;
        self.enter()?;
        let mut keys: Vec<Cow<'a, str>> = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a string key").into());
            }
            let key = self.parse_string()?;
            if self.peek() != Some(b':') {
                return Err(self.syntax("expected ':' after an object key").into());
            }
            self.pos += 1;
            // Small objects (the common case) are checked as they grow; large ones are
            // sorted once at the end, so a hostile object cannot go quadratic.
            if keys.len() < SMALL_OBJECT && keys.contains(&key) {
                return Err(ParseError::DuplicateKey {
                    offset: start,
                    key: key.into_owned(),
                }
                .into());
            }
            keys.push(key.clone());
            member(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.syntax("expected ',' or '}' in an object").into()),
            }
        }
        if keys.len() > SMALL_OBJECT {
            keys.sort_unstable();
            if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
                return Err(ParseError::DuplicateKey {
                    offset: start,
                    key: w[0].clone().into_owned(),
                }
                .into());
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn parse_array_with(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        self.pos += 1;
        self.enter()?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.syntax("expected ',' or ']' in an array")),
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn parse_object(&mut self) -> Result<Json<'a>, ParseError> {
        let mut members = Vec::new();
        self.parse_object_with(|p, key| {
            let v = p.parse_value()?;
            members.push((key, v));
            Ok::<(), ParseError>(())
        })?;
        Ok(Json::Object(members))
    }

    fn parse_array(&mut self) -> Result<Json<'a>, ParseError> {
        let mut items = Vec::new();
        self.parse_array_with(|p| {
            items.push(p.parse_value()?);
            Ok(())
        })?;
        Ok(Json::Array(items))
    }

    /// Checks a value with every rule of [`Parser::parse_value`] without building it
    /// (the decoder only needs the payload's text, not its tree).
    pub(crate) fn skip_value(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(b'{') => self.parse_object_with(|p, _| p.skip_value()),
            Some(b'[') => self.parse_array_with(|p| p.skip_value()),
            _ => self.parse_value().map(drop),
        }
    }

    /// Parses a string starting at the opening quote.
    pub(crate) fn parse_string(&mut self) -> Result<Cow<'a, str>, ParseError> {
        debug_assert_eq!(self.bytes.get(self.pos), Some(&b'"'));
        self.pos += 1;
        let start = self.pos;
        // Fast path: no escapes means the wire text is the value.
        loop {
            match self.bytes.get(self.pos) {
                None => return Err(self.truncated()),
                Some(b'"') => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(&b) if b < 0x20 => {
                    return Err(self.syntax("control character inside a string"))
                }
                Some(_) => self.pos += 1,
            }
        }
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        loop {
            let run = self.pos;
            loop {
                match self.bytes.get(self.pos) {
                    None => return Err(self.truncated()),
                    Some(b'"' | b'\\') => break,
                    Some(&b) if b < 0x20 => {
                        return Err(self.syntax("control character inside a string"))
                    }
                    Some(_) => self.pos += 1,
                }
            }
            out.push_str(&self.text[run..self.pos]);
            if self.bytes[self.pos] == b'"' {
                self.pos += 1;
                return Ok(Cow::Owned(out));
            }
            self.pos += 1; // backslash
            let c = match self.bytes.get(self.pos) {
                None => return Err(self.truncated()),
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => {
                    self.pos += 1;
                    let hi = self.hex4()?;
                    let c = match hi {
                        0xD800..=0xDBFF => {
                            // msgspec (like Python's json) would otherwise hand Python a
                            // lone surrogate; it refuses, and so do we.
                            if self.bytes.get(self.pos) != Some(&b'\\')
                                || self.bytes.get(self.pos + 1) != Some(&b'u')
                            {
                                return Err(self.syntax("unpaired UTF-16 surrogate escape"));
                            }
                            self.pos += 2;
                            let lo = self.hex4()?;
                            if !(0xDC00..=0xDFFF).contains(&lo) {
                                return Err(self.syntax("invalid UTF-16 surrogate pair"));
                            }
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        }
                        0xDC00..=0xDFFF => {
                            return Err(self.syntax("unpaired UTF-16 surrogate escape"))
                        }
                        _ => hi,
                    };
                    out.push(char::from_u32(c).expect("surrogates excluded above"));
                    continue;
                }
                Some(_) => return Err(self.syntax("invalid escape sequence")),
            };
            out.push(c);
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.bytes.get(self.pos) {
                None => return Err(self.truncated()),
                Some(&b) => (b as char)
                    .to_digit(16)
                    .ok_or_else(|| self.syntax("invalid \\u escape"))?,
            };
            v = v * 16 + d;
            self.pos += 1;
        }
        Ok(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn parse_number(&mut self) -> Result<Json<'a>, ParseError> {
        let start = self.pos;
        if self.bytes[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            None => return Err(self.truncated()),
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
                    return Err(self.syntax("leading zero in a number"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            Some(_) => return Err(self.syntax("invalid number")),
        }
        let mut is_float = false;
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.syntax("digit expected after '.'"));
            }
            is_float = true;
        }
        if matches!(self.bytes.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.bytes.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax("digit expected in an exponent"));
            }
            is_float = true;
        }
        let lit = &self.text[start..self.pos];
        if !is_float {
            if lit.len() > MAX_INT_LITERAL_LEN {
                return Err(ParseError::NumberOutOfRange { offset: start });
            }
            return Ok(Json::Int(lit));
        }
        // Rust's parser is correctly rounded, like msgspec's (checked on random inputs),
        // and accepts every literal the grammar above lets through.
        let v: f64 = lit
            .parse()
            .map_err(|_| ParseError::NumberOutOfRange { offset: start })?;
        if !v.is_finite() {
            return Err(ParseError::NumberOutOfRange { offset: start });
        }
        Ok(Json::Float(v))
    }
}

// ---------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------

/// Appends `s` as a JSON string the way both CPython's `json.dumps(ensure_ascii=False)`
/// and msgspec write it: only `"`, `\` and C0 controls are escaped (short forms where
/// JSON has them, else `\u00xx` in lowercase hex); DEL, U+2028 and the rest stay raw.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Shortest round-trip decimal digits of a finite, non-zero |x| and the decimal
/// exponent of the first digit (`|x| ≈ d1.d2d3… × 10^exp`).
fn shortest_digits(x: f64) -> (String, i32) {
    // `{:e}` prints the shortest digit string that parses back to the same double and,
    // among those, the one closest to it — CPython's repr (David Gay's mode 0) and
    // msgspec (Ryu) do the same. They differ only when |x| lies exactly halfway between
    // two shortest candidates: Rust rounds the tie up, the others to the even digit.
    let mut s = String::with_capacity(32);
    write!(s, "{:e}", x.abs()).expect("writing to a String");
    let (mant, exp) = s.split_once('e').expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: String = mant.chars().filter(|&c| c != '.').collect();
    let n = digits.len() as i32;
    let d: u64 = digits.parse().expect("at most 17 digits");
    // Exponent of the last digit; the tie points are (10d ± 5) × 10^(q-1).
    let q = exp - n + 1;
    let alt = if is_exactly(x.abs(), 10 * d - 5, q - 1) {
        Some((d - 1, d))
    } else if is_exactly(x.abs(), 10 * d + 5, q - 1) {
        Some((d, d + 1))
    } else {
        None
    };
    match alt {
        Some((lo, hi)) => {
            let even = if lo % 2 == 0 { lo } else { hi };
            if even == d || even == 0 {
                return (digits, exp);
            }
            // Rebuild from the integer: a carry (…9 + 1) can add a digit, and
            // trailing zeros are not part of a shortest form.
            let mut s = even.to_string();
            let even_exp = q + s.len() as i32 - 1;
            while s.len() > 1 && s.ends_with('0') {
                s.pop();
            }
            // At a power of two the gap below is half the gap above, so the lower
            // candidate may not round-trip; then there was no real choice.
            let round_trips = format!("{s}e{}", even_exp - s.len() as i32 + 1)
                .parse::<f64>()
                .is_ok_and(|v| v == x.abs());
            if round_trips {
                (s, even_exp)
            } else {
                (digits, exp)
            }
        }
        None => (digits, exp),
    }
}

/// Whether the finite double `x` equals `n × 10^j` exactly, for an odd `n`.
fn is_exactly(x: f64, n: u64, j: i32) -> bool {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (m, e) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    if m == 0 {
        return false;
    }
    // x = m_odd × 2^big_e and n × 10^j = n × 5^j × 2^j with n odd: equal iff the
    // powers of two match and the odd parts match.
    let tz = m.trailing_zeros() as i32;
    let (m_odd, big_e) = (u128::from(m >> tz), e + tz);
    if big_e != j {
        return false;
    }
    let pow5 = |k: u32| 5u128.checked_pow(k);
    if j >= 0 {
        pow5(j as u32)
            .and_then(|p| p.checked_mul(u128::from(n)))
            .is_some_and(|v| v == m_odd)
    } else {
        pow5(j.unsigned_abs())
            .and_then(|p| p.checked_mul(m_odd))
            .is_some_and(|v| v == u128::from(n))
    }
}

/// Appends `digits × 10^(exp - len + 1)` in positional notation, with at least one
/// fractional digit (`100.0`, `0.0001`).
fn write_fixed(digits: &str, exp: i32, out: &mut String) {
    if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
}

fn write_mantissa(digits: &str, out: &mut String) {
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
}

/// CPython's `repr(float)`: shortest round-trip digits; positional when the decimal
/// exponent is in [-4, 16), else `d.ddde±XX` (sign always, at least two exponent digits).
///
/// `x` must be finite (callers never hold NaN or infinities: the parser refuses them).
pub fn python_float_repr(x: f64) -> String {
    let mut out = String::with_capacity(24);
    if x.is_sign_negative() {
        out.push('-');
    }
    if x == 0.0 {
        out.push_str("0.0");
        return out;
    }
    let (digits, exp) = shortest_digits(x);
    if (-4..16).contains(&exp) {
        write_fixed(&digits, exp, &mut out);
    } else {
        write_mantissa(&digits, &mut out);
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        write!(out, "{:02}", exp.unsigned_abs()).expect("writing to a String");
    }
    out
}

/// msgspec's JSON float encoding (the wire form, not the canonical form): shortest
/// round-trip digits; positional when the decimal exponent is in [-5, 16), else
/// `d.dddeX` with no `+` and no padding (`1e16`, `1e-7`, `1.7976931348623157e308`).
pub fn msgspec_float(x: f64) -> String {
    let mut out = String::with_capacity(24);
    if x.is_sign_negative() {
        out.push('-');
    }
    if x == 0.0 {
        out.push_str("0.0");
        return out;
    }
    let (digits, exp) = shortest_digits(x);
    if (-5..16).contains(&exp) {
        write_fixed(&digits, exp, &mut out);
    } else {
        write_mantissa(&digits, &mut out);
        write!(out, "e{exp}").expect("writing to a String");
    }
    out
}

/// Python's `str(int)` of an integer literal: only `-0` changes.
fn python_int(lit: &str) -> &str {
    if lit == "-0" {
        "0"
    } else {
        lit
    }
}

/// Appends the canonical form of `v` (sorted keys, Python number forms, compact).
pub fn write_canonical(v: &Json<'_>, out: &mut Vec<u8>) {
    match v {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Int(lit) => out.extend_from_slice(python_int(lit).as_bytes()),
        Json::Float(f) => out.extend_from_slice(python_float_repr(*f).as_bytes()),
        Json::Str(s) => write_json_string(s, out),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Json::Object(members) => {
            let mut order: Vec<&(Cow<'_, str>, Json<'_>)> = members.iter().collect();
            // `str` ordering is UTF-8 byte order, which is code point order: exactly
            // how Python sorts `str` keys.
            order.sort_unstable_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
            out.push(b'{');
            for (i, (k, val)) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                write_canonical(val, out);
            }
            out.push(b'}');
        }
    }
}

/// Appends `v` as msgspec's encoder would write the decoded Python value: members in
/// document order, compact, msgspec float forms, integers as Python prints them.
pub fn write_msgspec(v: &Json<'_>, out: &mut Vec<u8>) {
    match v {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Int(lit) => out.extend_from_slice(python_int(lit).as_bytes()),
        Json::Float(f) => out.extend_from_slice(msgspec_float(*f).as_bytes()),
        Json::Str(s) => write_json_string(s, out),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_msgspec(item, out);
            }
            out.push(b']');
        }
        Json::Object(members) => {
            out.push(b'{');
            for (i, (k, val)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                write_msgspec(val, out);
            }
            out.push(b'}');
        }
    }
}

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

/// Canonical form of any JSON document, as `json.dumps(..., sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False, allow_nan=False)` prints what msgspec
/// decodes from it.
pub fn canonicalize_str(json: &str) -> Result<String, CanonicalError> {
    let v = parse(json)?;
    let mut out = Vec::with_capacity(json.len());
    write_canonical(&v, &mut out);
    Ok(String::from_utf8(out).expect("the canonical writer only emits UTF-8"))
}

/// The exact bytes nekhebet-core signs: `canonicalize(msgspec.to_builtins(header))`,
/// i.e. all thirteen header fields (defaults and nulls included), keys sorted, `id` as
/// the string it was on the wire, `context`/`extensions` canonicalized recursively.
pub fn canonical_header(h: &Header) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"algorithm\":");
    write_json_string(&h.algorithm, &mut out);
    out.extend_from_slice(b",\"canonicalization\":");
    write_json_string(&h.canonicalization, &mut out);
    out.extend_from_slice(b",\"context\":");
    write_optional_object(h.context.as_deref().map(|r| r.get()), &mut out)?;
    out.extend_from_slice(b",\"expires_at\":");
    match &h.expires_at {
        Some(s) => write_json_string(s, &mut out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"extensions\":");
    write_optional_object(h.extensions.as_deref().map(|r| r.get()), &mut out)?;
    out.extend_from_slice(b",\"id\":");
    write_json_string(&h.id_raw, &mut out);
    out.extend_from_slice(b",\"issued_at\":");
    write_json_string(&h.issued_at, &mut out);
    out.extend_from_slice(b",\"key_id\":");
    write_json_string(&h.key_id, &mut out);
    out.extend_from_slice(b",\"nonce\":");
    write_json_string(&h.nonce, &mut out);
    out.extend_from_slice(b",\"payload_hash\":");
    write_json_string(&h.payload_hash, &mut out);
    out.extend_from_slice(b",\"source\":");
    write_json_string(&h.source, &mut out);
    out.extend_from_slice(b",\"type\":");
    write_json_string(&h.event_type, &mut out);
    out.extend_from_slice(b",\"version\":");
    write_json_string(&h.version, &mut out);
    out.push(b'}');
    Ok(out)
}

fn write_optional_object(raw: Option<&str>, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match raw {
        None => out.extend_from_slice(b"null"),
        Some(text) => {
            let v = parse(text)?;
            match v {
                Json::Object(_) => write_canonical(&v, out),
                // The decoder stores JSON null as `None`; anything else is not a dict.
                Json::Null => out.extend_from_slice(b"null"),
                other => {
                    return Err(CanonicalError::NotAnObject {
                        found: other.kind(),
                    })
                }
            }
        }
    }
    Ok(())
}

/// Canonical bytes of a payload, which must be a JSON object (nekhebet-core's
/// `canonicalize` refuses anything but a dict).
pub fn canonical_payload(payload_json: &str) -> Result<Vec<u8>, CanonicalError> {
    let v = parse(payload_json)?;
    canonical_object_bytes(&v)
}

/// Canonical bytes of an already parsed object.
pub fn canonical_object_bytes(v: &Json<'_>) -> Result<Vec<u8>, CanonicalError> {
    if !matches!(v, Json::Object(_)) {
        return Err(CanonicalError::NotAnObject { found: v.kind() });
    }
    let mut out = Vec::with_capacity(256);
    write_canonical(v, &mut out);
    Ok(out)
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of the canonical payload: what `header.payload_hash` must be.
pub fn payload_hash(payload_json: &str) -> Result<String, CanonicalError> {
    Ok(sha256_hex(&canonical_payload(payload_json)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTORS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nekhebet-core-4.0.0.jsonl"
    ));

    // Exact binary values are the point here: the ties only exist at full precision.
    #[allow(clippy::excessive_precision, clippy::approx_constant)]
    #[test]
    fn python_repr_known_cases() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e-7, "1e-07"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (1e15, "1000000000000000.0"),
            (123456789012.345, "123456789012.345"),
            (2.5e-5, "2.5e-05"),
            (100.0, "100.0"),
            (1e22, "1e+22"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (-2.5e-300, "-2.5e-300"),
            (9007199254740992.0, "9007199254740992.0"),
            (3.141592653589793, "3.141592653589793"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (0.00012345, "0.00012345"),
            (1e100, "1e+100"),
            (-1.5, "-1.5"),
            (2.2250738585072014e-308, "2.2250738585072014e-308"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.3, "0.3"),
            (1.0, "1.0"),
            // Exact ties between two shortest candidates go to the even digit.
            (1267860061485775.25, "1267860061485775.2"),
            (-193568066728101.125, "-193568066728101.12"),
            (701785558226.03125, "701785558226.0312"),
            (223692119297042.625, "223692119297042.62"),
            // A tie at a power of two where only the upper candidate round-trips.
            (5.9604644775390625e-08, "5.960464477539063e-08"),
            (5e-324, "5e-324"),
        ];
        for &(x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn msgspec_float_known_cases() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e16"),
            (1.5e16, "1.5e16"),
            (1e-4, "0.0001"),
            (1e-5, "0.00001"),
            (1.5e-5, "0.000015"),
            (1e-6, "1e-6"),
            (1.5e-6, "1.5e-6"),
            (1e-7, "1e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (1.2345678901234567e19, "1.2345678901234567e19"),
            (123456789012.345, "123456789012.345"),
        ];
        for &(x, want) in cases {
            assert_eq!(msgspec_float(x), want, "{x:e}");
        }
    }

    /// `(bits, repr(x), msgspec.json.encode(x))` computed by CPython 3.11 / msgspec:
    /// exact decimal ties (CPython and Ryu round them to even, Rust's `{:e}` up), powers
    /// of two (asymmetric rounding gaps), extremes, and random doubles.
    #[test]
    fn float_table_from_python() {
        let table: &[(u64, &str, &str)] = &[
            (
                0x43120472b25beb3d,
                "1267860061485775.2",
                "1267860061485775.2",
            ),
            (
                0xc2e601927b6e14a4,
                "-193568066728101.12",
                "-193568066728101.12",
            ),
            (0x42646cb5b99a4100, "701785558226.0312", "701785558226.0312"),
            (
                0x3e70000000000000,
                "5.960464477539063e-08",
                "5.960464477539063e-8",
            ),
            (0x0000000000000001, "5e-324", "5e-324"),
            (
                0x0010000000000000,
                "2.2250738585072014e-308",
                "2.2250738585072014e-308",
            ),
            (
                0x7fe0000000000000,
                "8.98846567431158e+307",
                "8.98846567431158e307",
            ),
            (
                0x4340000000000001,
                "9007199254740994.0",
                "9007199254740994.0",
            ),
            (
                0x43b0000000000000,
                "1.152921504606847e+18",
                "1.152921504606847e18",
            ),
            (
                0x4468000000000000,
                "3.541774862152234e+21",
                "3.541774862152234e21",
            ),
            (0x3fe0000000000000, "0.5", "0.5"),
            (
                0x3fd5555555555555,
                "0.3333333333333333",
                "0.3333333333333333",
            ),
            (
                0x3fe5555555555555,
                "0.6666666666666666",
                "0.6666666666666666",
            ),
            (0x44b52d02c7e14af6, "1e+23", "1e23"),
            (0x447c7e83209e90b2, "8.41e+21", "8.41e21"),
            (0x3ea0c6f7a0b5ed8d, "5e-07", "5e-7"),
            (0x3ed23ec6e52c3f23, "4.35e-06", "4.35e-6"),
            (
                0x3eb0000000000000,
                "9.5367431640625e-07",
                "9.5367431640625e-7",
            ),
            (
                0x43698c2f20268000,
                "5.7528067588096e+16",
                "5.7528067588096e16",
            ),
            (
                0x3f43af27f8000000,
                "0.0006007142219459638",
                "0.0006007142219459638",
            ),
            (0x412012dbabc00000, "526701.8354492188", "526701.8354492188"),
            (
                0x43466a57976cee80,
                "1.2618747845664e+16",
                "1.2618747845664e16",
            ),
            (
                0x431e072ee4400000,
                "2113036820152320.0",
                "2113036820152320.0",
            ),
            (
                0x43cafc6620af9400,
                "3.889082859375821e+18",
                "3.889082859375821e18",
            ),
            (0x42195d06ef24b660, "27233729481.1781", "27233729481.1781"),
            (0x4075d6e45605d800, "349.4307461002609", "349.4307461002609"),
            (
                0x3fa3b11e26e80000,
                "0.038460676430986496",
                "0.038460676430986496",
            ),
            (
                0x43253d56bc09cb00,
                "2989208621081984.0",
                "2989208621081984.0",
            ),
            (0x42e67a38c87cca60, "197713555875411.0", "197713555875411.0"),
            (0x4084ce2491200000, "665.7678549289703", "665.7678549289703"),
            (
                0x40ab3680f9af7f00,
                "3483.2519049494294",
                "3483.2519049494294",
            ),
            (0x42fddfd547512000, "525555090133504.0", "525555090133504.0"),
            (0x423d92d406000000, "127017420288.0", "127017420288.0"),
            (
                0x3ebe6c0a95b40000,
                "1.8132946795756943e-06",
                "1.8132946795756943e-6",
            ),
            (
                0x3fdb8843d3430000,
                "0.43019195204760763",
                "0.43019195204760763",
            ),
            (
                0x442c450d956bef88,
                "2.607423157589972e+20",
                "2.607423157589972e20",
            ),
            (
                0x4393c6907f940000,
                "3.5624630243190374e+17",
                "3.5624630243190374e17",
            ),
            (
                0x3e02f9d018000000,
                "5.522693830029013e-10",
                "5.522693830029013e-10",
            ),
            (0x41a5e518a8d00000, "183667796.40625", "183667796.40625"),
            (0x418df94d87400000, "62859696.90625", "62859696.90625"),
        ];
        for &(bits, repr, msgspec) in table {
            let x = f64::from_bits(bits);
            assert_eq!(python_float_repr(x), repr, "{x:e}");
            assert_eq!(msgspec_float(x), msgspec, "{x:e}");
        }
    }

    /// Every float in the vectors' canonical payloads is printed as Python printed it.
    #[test]
    fn vector_floats_match_python_repr() {
        let mut n = 0;
        for line in VECTORS.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let Some(cp) = v["canonical_payload"].as_str() else {
                continue;
            };
            let tree = parse(cp).unwrap();
            let mut stack = vec![&tree];
            while let Some(node) = stack.pop() {
                match node {
                    Json::Float(f) => {
                        let repr = python_float_repr(*f);
                        assert!(cp.contains(&repr), "{repr} not in {cp}");
                        assert_eq!(repr.parse::<f64>().unwrap().to_bits(), f.to_bits());
                        n += 1;
                    }
                    Json::Array(items) => stack.extend(items.iter()),
                    Json::Object(m) => stack.extend(m.iter().map(|(_, v)| v)),
                    _ => {}
                }
            }
        }
        assert!(n > 100, "only {n} floats found");
    }

    #[test]
    fn canonical_examples() {
        let cases: &[(&str, &str)] = &[
            (r#"{"b":1,"a":2}"#, r#"{"a":2,"b":1}"#),
            (
                r#" { "a" : [ 1 , 2.0 , -0 , -0.0 , 1E2 ] } "#,
                r#"{"a":[1,2.0,0,-0.0,100.0]}"#,
            ),
            (
                r#"{"x":1e16,"y":1e-7,"z":1000000000000000.0}"#,
                r#"{"x":1e+16,"y":1e-07,"z":1000000000000000.0}"#,
            ),
            (
                r#"{"n":18446744073709551616}"#,
                r#"{"n":18446744073709551616}"#,
            ),
            (
                r#"{"s":"\u00e9\ud83d\ude00\u2028\u007f\/"}"#,
                "{\"s\":\"é😀\u{2028}\u{7f}/\"}",
            ),
            (
                r#"{"c":"\u0000\u001f\b\f\n\r\t\"\\"}"#,
                r#"{"c":"\u0000\u001f\b\f\n\r\t\"\\"}"#,
            ),
            // Code point order: U+FF61 (3 UTF-8 bytes) sorts before U+1F600 (4 bytes)
            // although UTF-16 would put the surrogate pair first.
            (
                "{\"\u{1F600}\":1,\"\u{FF61}\":2,\"z\":3,\"\u{e9}\":4}",
                "{\"z\":3,\"\u{e9}\":4,\"\u{FF61}\":2,\"\u{1F600}\":1}",
            ),
            (r#"{"e":1e-999}"#, r#"{"e":0.0}"#),
            ("[]", "[]"),
            ("{}", "{}"),
            ("true", "true"),
        ];
        for (input, want) in cases {
            assert_eq!(&canonicalize_str(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn parse_errors() {
        use ParseError::*;
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let long_int = "1".repeat(4301);
        let neg_int = format!("-{}", "1".repeat(4300));
        type Check = fn(&ParseError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            ("", |e| matches!(e, Truncated { .. })),
            ("  ", |e| matches!(e, Truncated { .. })),
            ("{\"a\":", |e| matches!(e, Truncated { .. })),
            ("{\"a\":\"x", |e| matches!(e, Truncated { .. })),
            ("\u{feff}{}", |e| matches!(e, Syntax { offset: 0, .. })),
            ("{} x", |e| matches!(e, Syntax { .. })),
            ("{}\0", |e| matches!(e, Syntax { .. })),
            ("NaN", |e| matches!(e, Syntax { .. })),
            ("[Infinity]", |e| matches!(e, Syntax { .. })),
            ("[-Infinity]", |e| matches!(e, Syntax { .. })),
            ("[1e999]", |e| matches!(e, NumberOutOfRange { .. })),
            ("[-1e999]", |e| matches!(e, NumberOutOfRange { .. })),
            ("[01]", |e| matches!(e, Syntax { .. })),
            ("[1.]", |e| matches!(e, Syntax { .. })),
            ("[.5]", |e| matches!(e, Syntax { .. })),
            ("[+1]", |e| matches!(e, Syntax { .. })),
            ("[\"a\0b\"]", |e| matches!(e, Syntax { .. })),
            ("[\"\\ud800\"]", |e| matches!(e, Syntax { .. })),
            ("[\"\\udc00\"]", |e| matches!(e, Syntax { .. })),
            ("[\"\\ud800\\u0041\"]", |e| matches!(e, Syntax { .. })),
            ("[\"\\x\"]", |e| matches!(e, Syntax { .. })),
            ("{\"a\":1,\"a\":2}", |e| matches!(e, DuplicateKey { .. })),
            ("{\"a\":1,\"\\u0061\":2}", |e| {
                matches!(e, DuplicateKey { .. })
            }),
            ("[1,]", |e| matches!(e, Syntax { .. })),
            ("{\"a\":1,}", |e| matches!(e, Syntax { .. })),
            ("{'a':1}", |e| matches!(e, Syntax { .. })),
            (&deep, |e| matches!(e, TooDeep { .. })),
            (&long_int, |e| matches!(e, NumberOutOfRange { .. })),
            (&neg_int, |e| matches!(e, NumberOutOfRange { .. })),
        ];
        for (input, check) in cases {
            let err = parse(input).unwrap_err();
            assert!(check(&err), "{:?}: {err:?}", &input[..input.len().min(40)]);
        }
        // Boundaries that must still parse.
        assert!(parse(&"1".repeat(4300)).is_ok());
        assert!(parse(&format!("-{}", "1".repeat(4299))).is_ok());
        let ok_deep = "[".repeat(MAX_NESTING) + &"]".repeat(MAX_NESTING);
        assert!(parse(&ok_deep).is_ok());
        let big: String = (0..100).map(|i| format!("\"k{i}\":{i},")).collect();
        let dup = format!("{{{big}\"k7\":0}}");
        assert!(matches!(parse(&dup), Err(DuplicateKey { .. })));
    }

    #[test]
    fn payload_hash_of_vectors() {
        for line in VECTORS.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let Some(cp) = v["canonical_payload"].as_str() else {
                continue;
            };
            // Canonical text is a fixed point of canonicalization.
            assert_eq!(canonicalize_str(cp).unwrap(), cp);
            let want = v["meta"]["payload_hash"]
                .as_str()
                .unwrap()
                .to_ascii_lowercase();
            // The tampered payloads keep the original header's hash.
            let tampered = v["name"].as_str().unwrap().starts_with("payload-tampered-");
            assert_eq!(
                payload_hash(cp).unwrap() == want,
                !tampered,
                "{}",
                v["name"]
            );
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\\u{7f}\u{2028}a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn repr_round_trips(bits in any::<u64>()) {
            let x = f64::from_bits(bits);
            prop_assume!(x.is_finite());
            let r = python_float_repr(x);
            prop_assert_eq!(r.parse::<f64>().unwrap().to_bits(), x.to_bits());
            let m = msgspec_float(x);
            prop_assert_eq!(m.parse::<f64>().unwrap().to_bits(), x.to_bits());
            // Python's repr and msgspec share the digits; only the layout differs.
            let norm = |s: &str| s.parse::<f64>().unwrap().to_bits();
            prop_assert_eq!(norm(&r), norm(&m));
        }

        #[test]
        fn canonical_is_a_fixed_point(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            let once = canonicalize_str(&text).unwrap();
            let twice = canonicalize_str(&once).unwrap();
            prop_assert_eq!(&once, &twice);
        }

        #[test]
        fn parser_agrees_with_serde_json_on_arbitrary_text(s in "[\\[\\]{}\":,0-9eE.+\\-a-z\\\\ ]{0,24}") {
            let ours = parse(&s);
            let theirs = serde_json::from_str::<serde_json::Value>(&s);
            match (&ours, &theirs) {
                (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
                // serde_json lets duplicate keys through (last wins); we refuse them.
                (Err(ParseError::DuplicateKey { .. }), Ok(_)) => {}
                // serde_json (arbitrary_precision) keeps 1e999; msgspec and we refuse it.
                (Err(ParseError::NumberOutOfRange { .. }), Ok(_)) => {}
                _ => prop_assert!(false, "{:?}: ours {:?} theirs {:?}", s, ours, theirs),
            }
        }
    }
}
