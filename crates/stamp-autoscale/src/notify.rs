//! The webhook body Azure posts for a scale action (version 1.0, reference §1.9), built from an
//! [`Evaluation`], so receivers written for Azure work unchanged. Sending it (and logging
//! failures without blocking scaling) is the service's job.

use serde_json::{Map, Value, json};

use crate::engine::Evaluation;
use crate::setting::Webhook;

/// What the service knows about the scaled resource; Azure-only fields may stay empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookContext<'a> {
    /// The autoscale setting's id (Azure: its ARM id).
    pub setting_id: &'a str,
    pub setting_name: &'a str,
    pub subscription_id: &'a str,
    pub resource_group_name: &'a str,
    /// The plan's name.
    pub resource_name: &'a str,
    /// E.g. `microsoft.web/serverfarms`, Azure's type for App Service plans.
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub portal_link: &'a str,
}

/// The POST body for `webhook` about `evaluation`; `None` when the evaluation does not scale.
pub fn webhook_body(
    context: &WebhookContext<'_>,
    webhook: &Webhook,
    evaluation: &Evaluation,
) -> Option<Value> {
    if !evaluation.scales() {
        return None;
    }
    let (old, new) = (evaluation.current, evaluation.decision.target);
    let operation = if new > old { "Scale Out" } else { "Scale In" };
    let properties: Map<String, Value> = webhook
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Some(json!({
        "version": "1.0",
        "status": "Activated",
        "operation": operation,
        "context": {
            "timestamp": evaluation.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "id": context.setting_id,
            "name": context.setting_name,
            "details": format!(
                "Autoscale successfully started scale operation for resource '{}' from capacity '{old}' to capacity '{new}'",
                context.resource_name
            ),
            "subscriptionId": context.subscription_id,
            "resourceGroupName": context.resource_group_name,
            "resourceName": context.resource_name,
            "resourceType": context.resource_type,
            "resourceId": context.resource_id,
            "portalLink": context.portal_link,
            "oldCapacity": old.to_string(),
            "newCapacity": new.to_string(),
        },
        "properties": properties,
    }))
}
