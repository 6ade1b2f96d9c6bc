//! Kubernetes name rules, checked before anything is sent.

/// A DNS-1123 subdomain (object names such as a Lease's): at most 253
/// characters, dot-separated labels of lowercase alphanumerics and `-`, each
/// starting and ending with an alphanumeric.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_label_body)
}

/// A DNS-1123 label (namespaces): like one subdomain label, at most 63 characters.
pub fn is_dns1123_label(name: &str) -> bool {
    name.len() <= 63 && is_label_body(name)
}

fn is_label_body(label: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !label.is_empty()
        && label.starts_with(alnum)
        && label.ends_with(alnum)
        && label.chars().all(|c| alnum(c) || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_and_labels() {
        assert!(is_dns1123_subdomain("shard-coordinator.counter"));
        assert!(is_dns1123_subdomain("a"));
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", "a.-b"] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_dns1123_label("default"));
        assert!(!is_dns1123_label("kube.system"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
    }
}
