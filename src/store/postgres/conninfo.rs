//! libpq connection strings, in both forms (`postgres://` URLs and `key=value` strings): splitting
//! out the TLS parameters tokio-postgres does not know ([`split_tls_params`]), and redaction
//! ([`redact_url`]), so a connection string is never shown with its password.

use std::path::PathBuf;

/// Replaces the password of a PostgreSQL URL (userinfo or a `password` query parameter) or of a
/// key=value string (`password=…`, quoted or not) with `***`. Errs on the side of hiding too much:
/// a URL's userinfo runs to its LAST `@`, so a raw `@` inside a password cannot expose its tail.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (creds, after) = match rest.rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                let masked = if userinfo.contains(':') {
                    format!("{user}:***@")
                } else {
                    format!("{userinfo}@")
                };
                (masked, &rest[at + 1..])
            }
            None => (String::new(), rest),
        };
        let after = match after.split_once('?') {
            Some((host, query)) => {
                let query = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if is_secret_conn_param(&percent_decode(k)) => {
                            format!("{k}=***")
                        }
                        _ => kv.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("&");
                format!("{host}?{query}")
            }
            None => after.to_string(),
        };
        return format!("{scheme}://{creds}{after}");
    }
    let mut out = String::with_capacity(url.len());
    let mut pos = 0;
    for kv in KvParams::new(url) {
        match kv {
            Ok(kv) => {
                out.push_str(&url[pos..kv.start]);
                if is_secret_conn_param(&kv.key) {
                    out.push_str(&url[kv.start..kv.value_start]);
                    out.push_str("***");
                } else {
                    out.push_str(&url[kv.start..kv.end]);
                }
                pos = kv.end;
            }
            Err(at) => {
                // Not parseable from here on: hide the rest rather than guess.
                out.push_str(&url[pos..at]);
                out.push_str("***");
                return out;
            }
        }
    }
    out.push_str(&url[pos..]);
    out
}

/// Connection parameters that hold a secret.
fn is_secret_conn_param(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits libpq's `sslmode` and `sslrootcert` out of a connection string (tokio-postgres refuses
/// `verify-ca`, `verify-full` and `sslrootcert`): the string without them, and their values.
pub(super) fn split_tls_params(url: &str) -> (String, Option<String>, Option<PathBuf>) {
    let mut mode = None;
    let mut root = None;
    if let Some((scheme, rest)) = url.split_once("://") {
        // Where tokio-postgres's own parser ends the credentials: at the first `@`.
        let creds_end = rest.find('@').map_or(0, |at| at + 1);
        let Some(q) = rest[creds_end..].find('?').map(|q| creds_end + q) else {
            return (url.to_string(), None, None);
        };
        let mut kept = Vec::new();
        for kv in rest[q + 1..].split('&') {
            match kv.split_once('=').map(|(k, v)| (percent_decode(k), v)) {
                Some((k, v)) if k == "sslmode" => mode = Some(percent_decode(v)),
                Some((k, v)) if k == "sslrootcert" => root = Some(PathBuf::from(percent_decode(v))),
                _ => kept.push(kv),
            }
        }
        let base = &rest[..q];
        let url = if kept.is_empty() {
            format!("{scheme}://{base}")
        } else {
            format!("{scheme}://{base}?{}", kept.join("&"))
        };
        return (url, mode, root);
    }
    let mut out = String::with_capacity(url.len());
    let mut pos = 0;
    for kv in KvParams::new(url) {
        let Ok(kv) = kv else {
            // Leave the string as it is: tokio-postgres reports the syntax error (validation
            // prints the string redacted).
            return (url.to_string(), None, None);
        };
        match kv.key.as_str() {
            "sslmode" => mode = Some(kv.value),
            "sslrootcert" => root = Some(PathBuf::from(kv.value)),
            _ => {
                out.push_str(&url[pos..kv.end]);
                pos = kv.end;
                continue;
            }
        }
        out.push_str(&url[pos..kv.start]);
        pos = kv.end;
    }
    out.push_str(&url[pos..]);
    (out, mode, root)
}

/// One `key = value` of a libpq key=value connection string.
struct KvParam {
    key: String,
    value: String,
    /// Byte offsets: start of the key, start of the value, end of the value.
    start: usize,
    value_start: usize,
    end: usize,
}

/// The parameters of a key=value connection string, parsed as tokio-postgres does (values may be
/// single-quoted; a backslash escapes the next character). `Err(offset)` where the syntax breaks.
struct KvParams<'a> {
    s: &'a str,
    pos: usize,
    failed: bool,
}

impl<'a> KvParams<'a> {
    fn new(s: &'a str) -> Self {
        KvParams {
            s,
            pos: 0,
            failed: false,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.s[self.pos..].chars().next() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }
}

impl Iterator for KvParams<'_> {
    type Item = Result<KvParam, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.skip_ws();
        if self.pos >= self.s.len() {
            return None;
        }
        let start = self.pos;
        let fail = |me: &mut Self| {
            me.failed = true;
            Some(Err(start))
        };
        let key_len = self.s[start..]
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(self.s.len() - start);
        let key = self.s[start..start + key_len].to_string();
        self.pos = start + key_len;
        self.skip_ws();
        if key.is_empty() || !self.s[self.pos..].starts_with('=') {
            return fail(self);
        }
        self.pos += 1;
        self.skip_ws();
        let value_start = self.pos;
        let mut value = String::new();
        let mut chars = self.s[self.pos..].char_indices();
        let quoted = self.s[self.pos..].starts_with('\'');
        if quoted {
            chars.next();
        }
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => value.push(e),
                    None => return fail(self),
                },
                '\'' if quoted => {
                    end = Some(self.pos + i + 1);
                    break;
                }
                c if !quoted && c.is_whitespace() => {
                    end = Some(self.pos + i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = match end {
            Some(e) => e,
            None if quoted => return fail(self),
            None => self.s.len(),
        };
        self.pos = end;
        Some(Ok(KvParam {
            key,
            value,
            start,
            value_start,
            end,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_form_of_password() {
        let cases = [
            ("postgres://u:p%40ss@h:1/db", "postgres://u:***@h:1/db"),
            // A raw `@` in the password: everything up to the last `@` is hidden.
            ("postgres://u:p@ss@h:1/db", "postgres://u:***@h:1/db"),
            (
                "postgres://u@h/db?password=sekrit&x=1",
                "postgres://u@h/db?password=***&x=1",
            ),
            (
                "postgresql://h/db?passw%6Frd=sekrit",
                "postgresql://h/db?passw%6Frd=***",
            ),
            (
                "host=h password='a b\\' sekrit' user=u",
                "host=h password=*** user=u",
            ),
            (
                "host=h password = sekrit user=u",
                "host=h password = *** user=u",
            ),
            ("host=h password='unterminated sekrit", "host=h ***"),
            ("host=h sslpassword=sekrit", "host=h sslpassword=***"),
        ];
        for (url, want) in cases {
            let got = redact_url(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("sekrit") && !got.contains("ss@"), "{got}");
        }
    }
}
