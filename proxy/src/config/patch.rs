//! JSON merge patches (RFC 7396) on the raw configuration, for
//! `PUT /api/v1/config`: the patch is applied to the configuration as
//! written, then the result is validated like a file. A bad patch yields a
//! `ConfigError` naming the field and changes nothing.

use super::{validate, Config, ConfigError, RawConfig};
use serde_json::Value;

/// What `RawConfig::redacted` shows instead of the admin token.
pub const REDACTED: &str = "<redacted>";

impl RawConfig {
    /// The configuration as JSON, e.g. for `GET /api/v1/config`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A copy safe to show (`GET /api/v1/config`): the admin token is
    /// replaced by a placeholder. Keep patching the unredacted original, or
    /// the placeholder would become the token.
    pub fn redacted(&self) -> RawConfig {
        let mut raw = self.clone();
        if let Some(token) = raw.admin.as_mut().and_then(|a| a.token.as_mut()) {
            *token = REDACTED.to_string();
        }
        raw
    }

    /// Applies `patch` (a JSON merge patch: objects merge, `null` removes a
    /// field, anything else replaces) and validates the result. `origin`
    /// names the change in errors, e.g. "PUT /api/v1/config".
    pub fn merge_patch(
        &self,
        patch: &str,
        origin: &str,
    ) -> Result<(RawConfig, Config), ConfigError> {
        let err = |field: String, message: String| ConfigError {
            file: origin.to_string(),
            line: None,
            field,
            message,
        };
        let patch: Value = serde_json::from_str(patch)
            .map_err(|e| err(String::new(), format!("the patch is not valid JSON: {e}")))?;
        if !patch.is_object() {
            return Err(err(
                String::new(),
                "the patch must be a JSON object, e.g. {\"routing\":{\"default\":{\"load_balancer\":\"weight\"}}}"
                    .into(),
            ));
        }
        let mut doc = self.to_json();
        merge(&mut doc, &patch);
        let raw: RawConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let mut field = e.path().to_string();
            if field == "." {
                field.clear();
            }
            let message = e.into_inner().to_string();
            if let Some(name) = message
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                field = if field.is_empty() {
                    name.to_string()
                } else {
                    format!("{field}.{name}")
                };
            }
            err(field, message)
        })?;
        let config = validate(raw.clone(), origin, None)?;
        Ok((raw, config))
    }
}

/// RFC 7396, section 2.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Algorithm;

    const FILE: &str = "\
server: { listen: \"127.0.0.1:8080\", workers: auto }
upstreams:
  app: { backends: [ { addr: \"127.0.0.1:9000\" }, { addr: \"127.0.0.1:9001\" } ] }
routing:
  default: { upstream: app }
";

    fn raw() -> RawConfig {
        RawConfig::from_yaml_str(FILE, "proxy.yaml").unwrap()
    }

    #[test]
    fn redacts_the_token_only() {
        let text = FILE.replace("upstreams:", "admin: { token: s3cret }\nupstreams:");
        let raw = RawConfig::from_yaml_str(&text, "proxy.yaml").unwrap();
        let shown = raw.redacted();
        assert_eq!(
            shown.admin.as_ref().unwrap().token.as_deref(),
            Some(REDACTED)
        );
        assert!(!shown.to_json().to_string().contains("s3cret"));
        assert_eq!(shown.upstreams, raw.upstreams);
    }

    #[test]
    fn changes_a_balancer() {
        let (new_raw, config) = raw()
            .merge_patch(
                r#"{"routing":{"default":{"load_balancer":"weight"}}}"#,
                "PUT",
            )
            .unwrap();
        assert_eq!(config.routing["default"].load_balancer, Algorithm::Weight);
        assert_eq!(new_raw.server.workers, Some(crate::config::Workers::Auto));
    }

    #[test]
    fn null_removes_and_objects_merge() {
        let patch =
            r#"{"upstreams":{"old":null,"app":{"retries":0}},"server":{"idle_timeout":"5s"}}"#;
        let (r, c) = raw().merge_patch(patch, "PUT").unwrap();
        assert_eq!(c.upstreams["app"].retries, 0);
        assert_eq!(c.upstreams["app"].backends.len(), 2, "siblings kept");
        assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(5));
        let (_, c) = r
            .merge_patch(r#"{"server":{"idle_timeout":null}}"#, "PUT")
            .unwrap();
        assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(60));
    }

    #[test]
    fn health_check_added_changed_and_removed_by_patches() {
        let (r, c) = raw()
            .merge_patch(r#"{"upstreams":{"app":{"health_check":{}}}}"#, "PUT")
            .unwrap();
        assert_eq!(c.upstreams["app"].health_check.as_ref().unwrap().fall, 3);
        let (r, c) = r
            .merge_patch(
                r#"{"upstreams":{"app":{"health_check":{"fall":1,"interval":"100ms"}}}}"#,
                "PUT",
            )
            .unwrap();
        let h = c.upstreams["app"].health_check.clone().unwrap();
        assert_eq!((h.fall, h.interval.as_millis()), (1, 100));
        let (_, c) = r
            .merge_patch(r#"{"upstreams":{"app":{"health_check":null}}}"#, "PUT")
            .unwrap();
        assert_eq!(c.upstreams["app"].health_check, None);
        let e = r
            .merge_patch(
                r#"{"upstreams":{"app":{"health_check":{"interval":"1ms"}}}}"#,
                "PUT /api/v1/config",
            )
            .unwrap_err();
        assert_eq!(e.field, "upstreams.app.health_check.interval");
        let e = r
            .merge_patch(
                r#"{"upstreams":{"app":{"health_check":{"expect_status":true}}}}"#,
                "PUT /api/v1/config",
            )
            .unwrap_err();
        assert_eq!(e.field, "upstreams.app.health_check.expect_status", "{e}");
    }

    #[test]
    fn bad_patches_name_the_field() {
        let cases = [
            (
                r#"{"routing":{"default":{"load_balancer":"wieght"}}}"#,
                "routing.default.load_balancer",
                "unknown balancer",
            ),
            (
                r#"{"routing":{"default":{"upstream":"nope"}}}"#,
                "routing.default.upstream",
                "unknown upstream",
            ),
            (
                r#"{"server":{"max_conn":"many"}}"#,
                "server.max_conn",
                "invalid type",
            ),
            (
                r#"{"server":{"tiemout":"1s"}}"#,
                "server.tiemout",
                "unknown field",
            ),
            (r#"{"server":null}"#, "server", "missing field"),
            (
                r#"{"upstreams":{"app":{"backends":[{"addr":"127.0.0.1:1","weight":0}]}}}"#,
                "upstreams.app.backends[0].weight",
                "weight 0",
            ),
            (r#"[1]"#, "", "JSON object"),
            (r#"{"#, "", "not valid JSON"),
        ];
        for (patch, field, words) in cases {
            let e = raw().merge_patch(patch, "PUT /api/v1/config").unwrap_err();
            assert_eq!(e.field, field, "{patch}: {e}");
            assert!(e.message.contains(words), "{patch}: {e}");
            assert_eq!(e.line, None);
            assert!(e.to_string().starts_with("PUT /api/v1/config: "), "{e}");
        }
    }
}
