//! Which `kafka.properties` hold secrets, and their masking (`config` prints, logs never hold them).

use std::collections::BTreeMap;

/// Whether a `kafka.properties` key holds a secret (masked by `config`, never logged): librdkafka's
/// sensitive properties (passwords, private keys, OAuth secrets and configs, JAAS) and anything
/// else that names a password, secret, credential or token.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "credential", "token", "jaas"]
        .iter()
        .any(|w| k.contains(w))
        || matches!(
            k.as_str(),
            "ssl.key.pem" | "ssl_key" | "ssl.keystore.pem" | "sasl.oauthbearer.config"
        )
}

/// `properties` with secret values replaced by `***`.
pub fn mask_properties(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_property(k) {
                "***".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}
