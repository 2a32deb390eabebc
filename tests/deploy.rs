//! The configurations shipped in deploy/ are valid holdfast configurations: the
//! `proxy.toml` inside each Kubernetes ConfigMap passes holdfast's own validation.

use std::path::Path;

/// The indented block under `proxy.toml: |` in a ConfigMap manifest.
fn embedded_proxy_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("proxy.toml: |"));
    let header = lines.next().expect("a proxy.toml block");
    let key_indent = header.len() - header.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .map(|l| l.get(key_indent + 2..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_configmap_holds_a_valid_proxy_toml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    for shape in ["sidecar", "gateway"] {
        let manifest = std::fs::read_to_string(root.join(shape).join("configmap.yaml")).unwrap();
        // The resume key is a Secret mounted in the pod: here, a key file of the test's.
        let key_dir = tempfile::tempdir().unwrap();
        let key = key_dir.path().join("key");
        std::fs::write(&key, [7u8; 48]).unwrap();
        let toml = embedded_proxy_toml(&manifest).replace(
            "\"/etc/holdfast-resume/key\"",
            &format!("{:?}", key.display().to_string()),
        );
        assert!(
            toml.contains(&key.display().to_string()),
            "{shape}: the resume key is the mounted Secret"
        );
        assert!(
            toml.contains("[upstream]"),
            "{shape}: block not found:\n{toml}"
        );
        let config = holdfast::config::from_toml_str(&toml)
            .unwrap_or_else(|e| panic!("{shape}/configmap.yaml: {e}"));
        // Probes and scrapes reach the admin port on the pod IP.
        assert_eq!(
            config.admin.address.map(|a| a.port()),
            Some(9901),
            "{shape}"
        );
        assert!(
            config.admin.address.unwrap().ip().is_unspecified(),
            "{shape}"
        );
        // The drain fits in the grace period the Deployment gives.
        let deployment = std::fs::read_to_string(root.join(shape).join("deployment.yaml")).unwrap();
        let grace: u64 = deployment
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            grace > config.shutdown.drain_timeout.as_secs(),
            "{shape}: grace {grace}s"
        );
        if shape == "gateway" {
            // The gateway fronts two apps by path, and nothing else.
            let routes: Vec<&str> = config.routes.iter().map(|r| &*r.name).collect();
            assert_eq!(routes, ["chat", "feed"]);
            let to = |path: &str| config.pick(Some("ws.example.com"), path).map(|r| &*r.name);
            assert_eq!(to("/ws/chat/room"), Some("chat"));
            assert_eq!(to("/ws/feed"), Some("feed"));
            assert_eq!(to("/ws/chatter"), None);
            let services = std::fs::read_to_string(root.join(shape).join("service.yaml")).unwrap();
            for route in config.routes.iter() {
                let endpoint = &route.view.upstream.endpoints[0];
                assert!(
                    services.contains(&format!("name: {}", endpoint.host)),
                    "{}: no Service named {}",
                    route.name,
                    endpoint.host
                );
            }
        }
    }
}
