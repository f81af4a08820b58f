//! Python's float text from the shortest round-trip digits: CPython's `repr(float)` (the
//! canonical form, [`python_float_repr`]) and msgspec's float encoding (the wire form,
//! [`msgspec_float`]). Both print the shortest digit string that parses back to the same
//! double and, on an exact tie between two shortest candidates, the even one; only the
//! layout (when to switch to an exponent, how to print it) differs.

use std::fmt::Write as _;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::tests::VECTORS;
    use crate::canonical::{parse, Json};
    use proptest::prelude::*;

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
    }
}
