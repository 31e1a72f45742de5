//! What a session remembers so Tether can answer the app itself: the app's init (to check
//! a re-init names the same package and key), the cloud's ack with every later settings,
//! capabilities and device-state update folded in (PROTOCOL §13), and the subscription set
//! the cloud currently holds.

use serde_json::{Map, Value};

use super::machine::Frame;
use crate::protocol::Kind;

/// Identity fields of an init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitAuth {
    pub package_name: Option<String>,
    pub api_key: Option<String>,
}

impl InitAuth {
    /// Reads package and key from an init frame.
    pub fn of(frame: &Frame) -> Option<InitAuth> {
        let Frame::Text(t) = frame else { return None };
        let v: Value = serde_json::from_str(t.as_str()).ok()?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(InitAuth {
            package_name: s("packageName"),
            api_key: s("apiKey"),
        })
    }
}

/// The ack and the state folded into it.
#[derive(Debug, Clone, Default)]
pub struct AckCache {
    ack: Option<Map<String, Value>>,
    device_state: Option<Map<String, Value>>,
    dashboard: Vec<(Kind, Frame)>,
}

impl AckCache {
    /// Whether an ack has been seen.
    pub fn has_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// Folds one cloud->app frame of a state-bearing kind into the cache.
    pub fn fold(&mut self, kind: Kind, frame: &Frame) {
        let Frame::Text(text) = frame else { return };
        match kind {
            Kind::ConnectionAck
            | Kind::SettingsUpdate
            | Kind::AugmentosSettingsUpdate
            | Kind::CapabilitiesUpdate
            | Kind::DeviceStateUpdate => {}
            Kind::DashboardModeChanged | Kind::DashboardAlwaysOnChanged => {
                self.dashboard.retain(|(k, _)| *k != kind);
                self.dashboard.push((kind, frame.clone()));
                return;
            }
            _ => return,
        }
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text.as_str()) else {
            return;
        };
        match kind {
            Kind::ConnectionAck => self.ack = Some(msg),
            Kind::DeviceStateUpdate => {
                let Some(Value::Object(state)) = msg.get("state") else {
                    return;
                };
                let full = msg
                    .get("fullSnapshot")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                match (&mut self.device_state, full) {
                    (Some(cur), false) => cur.extend(state.clone()),
                    _ => self.device_state = Some(state.clone()),
                }
            }
            _ => {
                let Some(ack) = &mut self.ack else { return };
                match kind {
                    Kind::SettingsUpdate => {
                        if let Some(s) = msg.get("settings") {
                            ack.insert("settings".into(), s.clone());
                        }
                    }
                    Kind::CapabilitiesUpdate => {
                        if let Some(c) = msg.get("capabilities") {
                            ack.insert("capabilities".into(), c.clone());
                        }
                    }
                    Kind::AugmentosSettingsUpdate => {
                        let Some(Value::Object(update)) = msg.get("settings") else {
                            return;
                        };
                        // Either era's field name, whichever the ack carried (both if both).
                        let mut merged = false;
                        for field in ["mentraosSettings", "augmentosSettings"] {
                            if let Some(Value::Object(cur)) = ack.get_mut(field) {
                                cur.extend(update.clone());
                                merged = true;
                            }
                        }
                        if !merged {
                            ack.insert("mentraosSettings".into(), Value::Object(update.clone()));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// What changed between the cached ack and a new one, as the update messages the app
    /// would have received (settings, system settings, capabilities).
    pub fn diff(&self, new_ack: &Frame) -> Vec<(Frame, Kind)> {
        let (Some(old), Frame::Text(t)) = (&self.ack, new_ack) else {
            return Vec::new();
        };
        let Ok(Value::Object(new)) = serde_json::from_str::<Value>(t.as_str()) else {
            return Vec::new();
        };
        let session_id = new.get("sessionId").cloned().unwrap_or(Value::Null);
        let changed = |k: &str| new.get(k).is_some() && new.get(k) != old.get(k);
        let mut out = Vec::new();
        if changed("settings") {
            let msg = serde_json::json!({"type": "settings_update", "sessionId": session_id, "settings": new["settings"]});
            out.push((Frame::Text(msg.to_string().into()), Kind::SettingsUpdate));
        }
        for field in ["mentraosSettings", "augmentosSettings"] {
            if changed(field) {
                let msg = serde_json::json!({"type": "augmentos_settings_update", "sessionId": session_id, "settings": new[field]});
                out.push((
                    Frame::Text(msg.to_string().into()),
                    Kind::AugmentosSettingsUpdate,
                ));
                break;
            }
        }
        if changed("capabilities") {
            let caps = &new["capabilities"];
            let msg = serde_json::json!({"type": "capabilities_update", "capabilities": caps, "modelName": caps.get("modelName")});
            out.push((
                Frame::Text(msg.to_string().into()),
                Kind::CapabilitiesUpdate,
            ));
        }
        out
    }

    /// The frames that answer a re-init: the folded ack, then the device state and the
    /// dashboard state as the app would have seen them. Empty when no ack was seen.
    pub fn replay(&self, timestamp: &str) -> Vec<(Frame, Kind)> {
        let Some(ack) = &self.ack else {
            return Vec::new();
        };
        let mut out = vec![(
            Frame::Text(Value::Object(ack.clone()).to_string().into()),
            Kind::ConnectionAck,
        )];
        if let Some(state) = &self.device_state {
            let msg = serde_json::json!({
                "type": "device_state_update", "state": state, "fullSnapshot": true, "timestamp": timestamp
            });
            out.push((Frame::Text(msg.to_string().into()), Kind::DeviceStateUpdate));
        }
        out.extend(self.dashboard.iter().map(|(k, f)| (f.clone(), *k)));
        out
    }
}

/// A subscription list in canonical form (each entry as JSON text, sorted, deduplicated),
/// so two lists compare equal when they hold the same set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubSet(Vec<String>);

impl SubSet {
    /// Reads `subscriptions` of a `subscription_update` frame.
    pub fn of(frame: &Frame) -> Option<SubSet> {
        let Frame::Text(t) = frame else { return None };
        let v: Value = serde_json::from_str(t.as_str()).ok()?;
        let list = v.get("subscriptions")?.as_array()?;
        let mut entries: Vec<String> = list.iter().map(Value::to_string).collect();
        entries.sort();
        entries.dedup();
        Some(SubSet(entries))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every entry of `other` is in `self`.
    pub fn covers(&self, other: &SubSet) -> bool {
        other.0.iter().all(|e| self.0.binary_search(e).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> Frame {
        Frame::Text(v.to_string().into())
    }

    #[test]
    fn updates_are_folded_into_the_replayed_ack() {
        let mut c = AckCache::default();
        c.fold(
            Kind::ConnectionAck,
            &f(serde_json::json!({
                "type": "tpa_connection_ack", "settings": [{"key": "lang", "value": "en"}],
                "augmentosSettings": {"brightness": 50, "metricSystemEnabled": false},
                "capabilities": {"modelName": "A"}
            })),
        );
        c.fold(Kind::SettingsUpdate, &f(serde_json::json!({"type": "settings_update", "settings": [{"key": "lang", "value": "fr"}]})));
        c.fold(Kind::AugmentosSettingsUpdate, &f(serde_json::json!({"type": "augmentos_settings_update", "settings": {"brightness": 80}})));
        c.fold(Kind::CapabilitiesUpdate, &f(serde_json::json!({"type": "capabilities_update", "capabilities": {"modelName": "B"}})));
        c.fold(Kind::DeviceStateUpdate, &f(serde_json::json!({"type": "device_state_update", "state": {"wifi": true, "battery": 90}, "fullSnapshot": true})));
        c.fold(
            Kind::DeviceStateUpdate,
            &f(serde_json::json!({"type": "device_state_update", "state": {"battery": 80}})),
        );
        c.fold(
            Kind::DashboardModeChanged,
            &f(serde_json::json!({"type": "dashboard_mode_changed", "mode": "main"})),
        );
        c.fold(
            Kind::DashboardModeChanged,
            &f(serde_json::json!({"type": "dashboard_mode_changed", "mode": "expanded"})),
        );
        let out = c.replay("T");
        assert_eq!(out.len(), 3);
        let Frame::Text(ack) = &out[0].0 else {
            panic!()
        };
        let ack: Value = serde_json::from_str(ack.as_str()).expect("json");
        assert_eq!(ack["settings"][0]["value"], "fr");
        assert_eq!(ack["augmentosSettings"]["brightness"], 80);
        assert_eq!(ack["augmentosSettings"]["metricSystemEnabled"], false);
        assert_eq!(ack["capabilities"]["modelName"], "B");
        let Frame::Text(ds) = &out[1].0 else { panic!() };
        let ds: Value = serde_json::from_str(ds.as_str()).expect("json");
        assert_eq!(
            ds["state"],
            serde_json::json!({"wifi": true, "battery": 80})
        );
        let Frame::Text(dm) = &out[2].0 else { panic!() };
        assert!(dm.as_str().contains("expanded"));
    }

    #[test]
    fn sub_sets_compare_as_sets() {
        let a = SubSet::of(&f(serde_json::json!({"subscriptions": ["b", "a", {"stream": "location_stream", "rate": "high"}]}))).expect("a");
        let b = SubSet::of(&f(serde_json::json!({"subscriptions": [{"stream": "location_stream", "rate": "high"}, "a", "b", "a"]}))).expect("b");
        let c = SubSet::of(&f(serde_json::json!({"subscriptions": ["a"]}))).expect("c");
        assert_eq!(a, b);
        assert!(a.covers(&c));
        assert!(!c.covers(&a));
        assert!(SubSet::of(&f(serde_json::json!({"subscriptions": []})))
            .expect("e")
            .is_empty());
    }

    #[test]
    fn init_auth_reads_package_and_key() {
        let a = InitAuth::of(&f(
            serde_json::json!({"type": "tpa_connection_init", "packageName": "p", "apiKey": "k"}),
        ))
        .expect("auth");
        assert_eq!(a.package_name.as_deref(), Some("p"));
        assert_eq!(a.api_key.as_deref(), Some("k"));
    }
}
