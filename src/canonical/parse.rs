//! The strict JSON parser: the *Python* view of a JSON document, as msgspec decodes it.
//!
//! [`parse`] keeps number text (a number without fraction or exponent is a Python `int` of
//! any size, [`Json::Int`]; anything else is a finite IEEE double, [`Json::Float`]), rejects
//! what msgspec rejects (and duplicate keys, which msgspec silently collapses), and never
//! recurses deeper than [`MAX_NESTING`]. The crate-visible [`Parser`] lets the envelope
//! decoder walk the top-level and header objects itself with exactly the same rules.

use std::borrow::Cow;

use super::scan::plain_prefix;

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
            self.pos += plain_prefix(&self.bytes[self.pos..]);
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
                self.pos += plain_prefix(&self.bytes[self.pos..]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
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
