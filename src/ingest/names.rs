//! Name rules shared by the HTTP layer and the decoders.
//!
//! Databases and measurements become path segments in object storage, so both must match
//! `^[A-Za-z][A-Za-z0-9_-]*$`; only the length limit differs.

/// Longest accepted database name, in bytes.
pub const MAX_DATABASE_LEN: usize = 64;
/// Longest accepted measurement name, in bytes.
pub const MAX_MEASUREMENT_LEN: usize = 128;

/// Whether `name` may be used as a database name.
pub fn valid_database(name: &str) -> bool {
    valid_name_bytes(name.as_bytes(), MAX_DATABASE_LEN)
}

/// Whether `name` may be used as a measurement name.
pub fn valid_measurement(name: &str) -> bool {
    valid_name_bytes(name.as_bytes(), MAX_MEASUREMENT_LEN)
}

/// Byte-level check of `^[A-Za-z][A-Za-z0-9_-]*$` with a length cap; usable on raw request
/// bytes before they are known to be UTF-8 (a match is always ASCII).
pub(crate) fn valid_name_bytes(name: &[u8], max_len: usize) -> bool {
    match name.split_first() {
        Some((first, rest)) if name.len() <= max_len && first.is_ascii_alphabetic() => rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_digits_underscore_dash_after_a_letter() {
        for name in ["a", "Z", "cpu", "cpu_usage", "cpu-usage", "A1_b-2", "x__--"] {
            assert!(valid_database(name), "{name}");
            assert!(valid_measurement(name), "{name}");
        }
    }

    #[test]
    fn rejects_bad_first_character_and_bad_characters() {
        for name in [
            "",
            "1cpu",
            "_cpu",
            "-cpu",
            "cpu usage",
            "cpu,host",
            "cpu.usage",
            "cpu/x",
            "cpü",
            "cpu\n",
            "cpu\\",
            " cpu",
        ] {
            assert!(!valid_database(name), "{name:?}");
            assert!(!valid_measurement(name), "{name:?}");
        }
    }

    #[test]
    fn length_limits_differ_between_databases_and_measurements() {
        let at_db_limit = "d".repeat(64);
        let over_db_limit = "d".repeat(65);
        let at_measurement_limit = "m".repeat(128);
        let over_measurement_limit = "m".repeat(129);
        assert!(valid_database(&at_db_limit));
        assert!(!valid_database(&over_db_limit));
        assert!(valid_measurement(&over_db_limit));
        assert!(valid_measurement(&at_measurement_limit));
        assert!(!valid_measurement(&over_measurement_limit));
    }

    #[test]
    fn raw_bytes_that_are_not_utf8_are_rejected() {
        assert!(!valid_name_bytes(b"cpu\xff", 128));
        assert!(valid_name_bytes(b"cpu", 128));
    }
}
