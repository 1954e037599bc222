//! Checks of the names a spec holds, for objects the CRD schema did not check (created against an
//! older CRD). The schema's patterns are [`DNS_SUBDOMAIN`](crate::DNS_SUBDOMAIN) and
//! [`SECRET_KEY`](crate::SECRET_KEY); these functions say in words what is wrong.

/// A Kubernetes object name: an RFC 1123 subdomain of at most 253 characters.
pub fn object_name(name: &str) -> Result<(), String> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if (1..=253).contains(&name.len()) && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid object name: use at most 253 lowercase letters, digits, '-' and '.', \
             beginning and ending with a letter or digit",
            quote(name)
        ))
    }
}

/// A key of a Secret's data: letters, digits, '-', '_' and '.'.
pub fn secret_key(key: &str) -> Result<(), String> {
    if (1..=253).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        Ok(())
    } else {
        Err(format!("{} is not a valid Secret key: use letters, digits, '-', '_' and '.'", quote(key)))
    }
}

/// Debug-quoted (control characters escaped) and cut when very long.
pub fn quote(value: &str) -> String {
    let cut: String = value.chars().take(100).collect();
    if cut.len() < value.len() { format!("{cut:?}... ({} bytes)", value.len()) } else { format!("{cut:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert!(object_name("my-controlplane").is_ok() && object_name("a.b-c").is_ok());
        for bad in ["", "My-CP", "cp\n", "cp ", "-cp", "a..b", &"a".repeat(254)] {
            assert!(object_name(bad).is_err(), "{bad:?}");
        }
        assert!(secret_key("accessKeyID").is_ok() && secret_key("ca.crt").is_ok());
        assert!(secret_key("access key").unwrap_err().contains("\"access key\""));
        assert!(quote(&"x".repeat(500)).ends_with("(500 bytes)"));
    }
}
