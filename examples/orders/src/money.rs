//! Money as decimal strings and integer cents: never a float.

/// Parses a positive decimal amount with at most two decimals ("19.99",
/// "5", "0.50") into cents.
pub fn parse_cents(text: &str) -> Result<i64, &'static str> {
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    if units.is_empty() || !units.bytes().all(|b| b.is_ascii_digit()) || units.len() > 12 {
        return Err("must be a decimal string like \"19.99\"");
    }
    if text.contains('.')
        && (fraction.is_empty() || fraction.len() > 2 || !fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("must have one or two decimals, like \"19.99\"");
    }
    let units: i64 = units.parse().map_err(|_| "is too large")?;
    let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| "is not a number")?;
    let cents = units * 100 + fraction;
    if cents <= 0 {
        return Err("must be greater than zero");
    }
    Ok(cents)
}

/// Formats cents as a decimal string with two decimals.
pub fn format_cents(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_round_trip() {
        assert_eq!(parse_cents("19.99"), Ok(1999));
        assert_eq!(parse_cents("5"), Ok(500));
        assert_eq!(parse_cents("0.5"), Ok(50));
        assert_eq!(format_cents(1999), "19.99");
        assert_eq!(format_cents(50), "0.50");
    }

    #[test]
    fn bad_amounts_are_refused() {
        for bad in ["", "abc", "-1", "1.999", "1.", ".5", "0", "0.00", "1e3", "12,50", " 1"] {
            assert!(parse_cents(bad).is_err(), "{bad}");
        }
    }
}
