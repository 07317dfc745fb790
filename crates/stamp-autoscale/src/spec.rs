//! The autoscale setting exactly as Azure writes it: the `properties` of a
//! `Microsoft.Insights/autoscaleSettings` resource, read as-is and written back unchanged.
//!
//! This layer is deliberately lenient so that [`crate::setting::validate`] can report *every*
//! problem with its JSON path instead of stopping at the first type error: every leaf is a
//! [`Scalar`] (Azure writes capacities and `value` as strings, `threshold` as a number, and users
//! write either), every field is optional, and unknown fields are kept in `other` so a setting
//! round-trips. Property names are matched the way ARM matches them, ignoring the case of their
//! first letter (`Dimensions`, `DimensionName` and `MetricTrigger` all occur in Microsoft's own
//! examples); they are written back in camelCase.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON leaf as written: a string, a number or a boolean. Serialized back in the same form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl Scalar {
    /// The value as text (`"3"`, `3` and `3.0` read as `3`, `3`, `3.0`).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Scalar::Text(s) => Cow::Borrowed(s.as_str()),
            Scalar::Number(n) => Cow::Owned(n.to_string()),
            Scalar::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }
}

impl From<&str> for Scalar {
    fn from(s: &str) -> Scalar {
        Scalar::Text(s.to_string())
    }
}

impl From<String> for Scalar {
    fn from(s: String) -> Scalar {
        Scalar::Text(s)
    }
}

impl From<u32> for Scalar {
    fn from(n: u32) -> Scalar {
        Scalar::Number(n.into())
    }
}

impl From<f64> for Scalar {
    fn from(n: f64) -> Scalar {
        serde_json::Number::from_f64(n).map_or(Scalar::Text(n.to_string()), Scalar::Number)
    }
}

impl From<bool> for Scalar {
    fn from(b: bool) -> Scalar {
        Scalar::Bool(b)
    }
}

/// `autoscaleSettings.properties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Scalar>,
    /// Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_resource_uri: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_resource_location: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Vec<ProfileSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Vec<NotificationSpec>>,
    /// Kept for round trips; predictive autoscale applies to VM scale sets only and is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictive_autoscale_policy: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A profile ("scale condition" in the portal).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSpec {
    /// Plain, or for portal-made companions a JSON string such as
    /// `{"name":"Auto created default scale condition","for":"Weekday"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_date: Option<FixedDateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<RecurrenceSpec>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Instance bounds; Azure writes them as strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacitySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Scalar>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_trigger: Option<MetricTriggerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_action: Option<ScaleActionSpec>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricTriggerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_name: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_namespace: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_resource_uri: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_resource_location: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_grain: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_window: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_aggregation: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<Vec<DimensionSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divide_per_instance: Option<Scalar>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A dimension filter; the REST spec spells these fields in PascalCase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DimensionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension_name: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Scalar>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleActionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Scalar>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Scalar>,
    /// Default `"1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Scalar>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixedDateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Scalar>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecurrenceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<Vec<Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<Vec<Scalar>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSpec {
    /// Must be `Scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Scalar>,
    /// Kept for round trips; Stamp sends no e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<WebhookSpec>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_to_subscription_administrator: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_to_subscription_co_administrators: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_emails: Option<Vec<Scalar>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_uri: Option<Scalar>,
    /// Custom key/value pairs copied into the webhook payload's `properties`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, Scalar>>,
}

/// Where a setting's JSON could not even be read as a setting (not JSON, or the wrong shape).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the autoscale setting is not valid JSON of the expected shape: {0}; \
     give the autoscaleSettings resource or its `properties` object as Azure exports it"
)]
pub struct SpecError(pub String);

impl SettingSpec {
    /// Reads a setting: either the ARM resource (`{"properties": {...}, ...}`) or the bare
    /// `properties` object. A resource's top-level `name` is used when `properties` has none.
    pub fn from_json(text: &str) -> Result<SettingSpec, SpecError> {
        let value: Value = serde_json::from_str(text).map_err(|e| SpecError(e.to_string()))?;
        SettingSpec::from_value(value)
    }

    /// As [`SettingSpec::from_json`], from a parsed value.
    pub fn from_value(value: Value) -> Result<SettingSpec, SpecError> {
        let Value::Object(mut top) = normalize_keys(value, false) else {
            return Err(SpecError("the top level is not a JSON object".into()));
        };
        let props = match top.remove("properties") {
            Some(Value::Object(mut props)) if !top.contains_key("profiles") => {
                if !props.contains_key("name")
                    && let Some(name) = top.remove("name")
                {
                    props.insert("name".into(), name);
                }
                props
            }
            Some(other) => {
                top.insert("properties".into(), other);
                top
            }
            None => top,
        };
        serde_json::from_value(Value::Object(props)).map_err(|e| SpecError(e.to_string()))
    }

    /// The setting as JSON (the `properties` object), in Azure's camelCase.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }
}

/// Lower-cases the first letter of every property name (ARM matches names without regard to
/// case; the common deviations are PascalCase), except inside webhook `properties`, which are
/// the user's own keys.
fn normalize_keys(value: Value, user_map: bool) -> Value {
    match value {
        Value::Object(map) if !user_map => {
            let is_webhook = map.keys().any(|k| k.eq_ignore_ascii_case("serviceUri"));
            map.into_iter()
                .map(|(k, v)| {
                    let key = lower_first(&k);
                    let user = is_webhook && key == "properties";
                    (key, normalize_keys(v, user))
                })
                .collect::<Map<_, _>>()
                .into()
        }
        Value::Array(items) if !user_map => items
            .into_iter()
            .map(|v| normalize_keys(v, false))
            .collect::<Vec<_>>()
            .into(),
        other => other,
    }
}

fn lower_first(key: &str) -> String {
    let mut chars = key.chars();
    match chars.next() {
        Some(first) if first.is_ascii_uppercase() => {
            let mut out = String::with_capacity(key.len());
            out.push(first.to_ascii_lowercase());
            out.push_str(chars.as_str());
            out
        }
        _ => key.to_string(),
    }
}
