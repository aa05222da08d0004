//! What the emulated Asterisk has loaded and installed, as `callverify doctor` finds it: the
//! dialplan's contexts and globals, the devices, the sounds, app_audiosocket, and the AMI
//! user's write privileges. [`Pbx::default`] is the kit installed as the guide says.

use std::collections::HashMap;

/// The running PBX's state.
#[derive(Debug, Clone)]
pub struct Pbx {
    /// Contexts in the running dialplan.
    pub contexts: Vec<String>,
    /// `DEVICE_STATE` per device (`PJSIP/callverify-trunk`); any other: `INVALID`.
    pub devices: HashMap<String, String>,
    /// Dialplan globals (`CALLVERIFY_AGI_HOST`).
    pub globals: HashMap<String, String>,
    /// (language, file) of sounds not installed.
    pub missing_sounds: Vec<(String, String)>,
    /// Whether app_audiosocket is loaded.
    pub audiosocket: bool,
    /// The AMI user's `write =` privileges, as in manager.conf.
    pub write: Vec<String>,
}

impl Default for Pbx {
    fn default() -> Self {
        Self {
            contexts: [
                "callverify-outbound",
                "callverify-qa",
                "callverify-support",
                "callverify-from-trunk",
                "callverify-selftest",
            ]
            .map(String::from)
            .into(),
            devices: [("PJSIP/callverify-trunk".to_owned(), "NOT_INUSE".to_owned())].into(),
            globals: [(
                "CALLVERIFY_AGI_HOST".to_owned(),
                "127.0.0.1:4573".to_owned(),
            )]
            .into(),
            missing_sounds: Vec::new(),
            audiosocket: true,
            write: vec!["originate".into()],
        }
    }
}

/// Some of Asterisk 22's manager actions, with the privileges `ListCommands` shows for each
/// (`authority_to_str`: the flags, then `all`; `<none>` for actions anyone may run).
const ACTIONS: &[(&str, &str, &str)] = &[
    ("Ping", "Keepalive command.", "<none>"),
    ("Events", "Control Event Flow.", "<none>"),
    ("Logoff", "Logoff Manager.", "<none>"),
    ("Login", "Login Manager.", "<none>"),
    ("Challenge", "Generate Challenge for MD5 Auth.", "<none>"),
    ("ListCommands", "List available manager commands.", "<none>"),
    ("WaitEvent", "Wait for an event to occur.", "<none>"),
    ("Originate", "Originate a call.", "originate,all"),
    ("Hangup", "Hangup channel.", "system,call,all"),
    ("Redirect", "Redirect (transfer) a call.", "call,all"),
    (
        "Setvar",
        "Sets a channel variable or function value.",
        "call,all",
    ),
    ("Command", "Execute Asterisk CLI Command.", "command,all"),
    ("GetConfig", "Retrieve configuration.", "system,config,all"),
    ("UpdateConfig", "Update basic configuration.", "config,all"),
    ("ModuleLoad", "Module management.", "system,all"),
    (
        "CoreShowChannels",
        "List currently active channels.",
        "system,reporting,all",
    ),
];

impl Pbx {
    /// A dialplan function's value, for `GET VARIABLE NAME(args)`; `None`: not a function
    /// this PBX answers.
    pub(super) fn function(&self, name: &str) -> Option<String> {
        let (function, args) = name.strip_suffix(')')?.split_once('(')?;
        match function {
            "DIALPLAN_EXISTS" => Some(if self.contexts.iter().any(|c| c == args) {
                "1".into()
            } else {
                "0".into()
            }),
            "DEVICE_STATE" => Some(
                self.devices
                    .get(args)
                    .cloned()
                    .unwrap_or_else(|| "INVALID".into()),
            ),
            _ => None,
        }
    }

    /// The `ListCommands` response (manager.c): the actions the user's write privileges
    /// allow, and those needing none.
    pub(super) fn list_commands(&self, action_id: &str) -> String {
        let all = self.write.iter().any(|w| w == "all");
        let mut reply = format!("Response: Success\r\nActionID: {action_id}\r\n");
        for (action, synopsis, privs) in ACTIONS {
            let allowed = *privs == "<none>"
                || all
                || privs
                    .split(',')
                    .any(|p| p != "all" && self.write.iter().any(|w| w == p));
            if allowed {
                reply.push_str(&format!("{action}: {synopsis} (Priv: {privs})\r\n"));
            }
        }
        reply
    }
}
