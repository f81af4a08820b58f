//! The two writers over a parsed [`Json`] tree: nekhebet-core's canonical JSON
//! ([`write_canonical`]: keys sorted by code point, Python number forms, compact) and the
//! msgspec-compatible wire form used by `signing` ([`write_msgspec`]: members in document
//! order, msgspec float forms). Both escape strings the same way ([`write_json_string`]:
//! only `"`, `\` and C0 controls) and print integers as Python does (`-0` is `0`).

use std::borrow::Cow;

use super::float::{msgspec_float, python_float_repr};
use super::parse::Json;
use super::scan::plain_prefix;

/// Appends `s` as a JSON string the way both CPython's `json.dumps(ensure_ascii=False)`
/// and msgspec write it: only `"`, `\` and C0 controls are escaped (short forms where
/// JSON has them, else `\u00xx` in lowercase hex); DEL, U+2028 and the rest stay raw.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = s.as_bytes();
    loop {
        let plain = plain_prefix(rest);
        out.extend_from_slice(&rest[..plain]);
        let Some(&b) = rest.get(plain) else {
            break;
        };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        rest = &rest[plain + 1..];
    }
    out.push(b'"');
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
    write(v, Style::Canonical, out);
}

/// Appends `v` as msgspec's encoder would write the decoded Python value: members in
/// document order, compact, msgspec float forms, integers as Python prints them.
pub fn write_msgspec(v: &Json<'_>, out: &mut Vec<u8>) {
    write(v, Style::Msgspec, out);
}

/// What differs between the two writers: the order of an object's members and the float form.
#[derive(Clone, Copy)]
enum Style {
    /// Members sorted by key (`str` ordering is UTF-8 byte order, which is code point order:
    /// exactly how Python sorts `str` keys); floats as Python's `repr`.
    Canonical,
    /// Members in document order; floats as msgspec writes them.
    Msgspec,
}

fn write(v: &Json<'_>, style: Style, out: &mut Vec<u8>) {
    match v {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Int(lit) => out.extend_from_slice(python_int(lit).as_bytes()),
        Json::Float(f) => {
            let form = match style {
                Style::Canonical => python_float_repr(*f),
                Style::Msgspec => msgspec_float(*f),
            };
            out.extend_from_slice(form.as_bytes());
        }
        Json::Str(s) => write_json_string(s, out),
        Json::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, style, out);
            }
            out.push(b']');
        }
        Json::Object(members) => {
            let mut order: Vec<&(Cow<'_, str>, Json<'_>)> = members.iter().collect();
            match style {
                Style::Canonical => order.sort_unstable_by(|a, b| a.0.as_ref().cmp(b.0.as_ref())),
                Style::Msgspec => {}
            }
            out.push(b'{');
            for (i, (k, val)) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                write(val, style, out);
            }
            out.push(b'}');
        }
    }
}
