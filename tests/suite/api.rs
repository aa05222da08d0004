//! The web app's HTTP API, spoken over raw HTTP/1.1 so that hostile bodies (invalid UTF-8,
//! wrong types, huge ones) reach the daemon as sent. Runs on SQLite and Postgres.

use crate::common::http::{http, Api};
use crate::common::{Daemon, Db, PHONE};
use callverify::domain::api_keys::ApiKeys;
use callverify_testkit::emulator::Call;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn create_call_and_read_back(db: Db) {
    let api = Api::new(db).await;
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "alice"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    let code = v["code"].as_str().unwrap().to_owned();
    assert_eq!(v["status"], "pending");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));

    let r = api.get(&format!("/v1/verifications/{id}")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.json().get("code").is_none(),
        "the code is shown only once"
    );

    Call::verify(&id)
        .press("#")
        .press(&code)
        .run(api.d.addr)
        .await
        .unwrap();
    let r = api.get(&format!("/v1/verifications/{id}")).await;
    assert_eq!(r.json()["status"], "verified");

    // Cancel after the end: 409.
    let r = api
        .post(&format!("/v1/verifications/{id}/cancel"), &json!({}), &[])
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "not_cancelable"));

    // A locale is read as its language, the one the call will speak.
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "bob", "locale": "es-MX"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["locale"], "es");
    api.d.stop().await;
}

async fn cancel_and_not_found(db: Db) {
    let api = Api::new(db).await;
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "bob"}),
            &[],
        )
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = api
        .post(&format!("/v1/verifications/{id}/cancel"), &json!({}), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "canceled");
    for path in [
        "/v1/verifications/vf_nope",
        "/v1/verifications/%00",
        "/v1/nothing",
    ] {
        let r = api.get(path).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{path}"
        );
    }
    let r = http(api.d.http, "DELETE", "/v1/verifications", &[], b"").await;
    assert_eq!(r.status, 405);
    api.d.stop().await;
}

async fn authentication_is_required(db: Db) {
    let api = Api::new(db).await;
    let body = json!({"phone": PHONE, "user_ref": "eve"}).to_string();
    let ct = ("Content-Type", "application/json");
    for auth in [
        None,
        Some("Bearer cvk_wrong"),
        Some("Basic abc"),
        Some("Bearer "),
    ] {
        let mut headers = vec![ct];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = http(
            api.d.http,
            "POST",
            "/v1/verifications",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "unauthorized"),
            "{auth:?}"
        );
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    let keys = ApiKeys::new(api.d.store.clone());
    let (row, secret) = keys.create("to revoke").await.unwrap();
    assert!(keys.revoke(&row.id).await.unwrap());
    // A read with `Authorization: <auth>`.
    let addr = api.d.http;
    let read_as = |auth: String| async move {
        http(
            addr,
            "GET",
            "/v1/verifications/vf_x",
            &[("Authorization", &auth)],
            b"",
        )
        .await
    };
    let r = read_as(format!("Bearer {secret}")).await;
    assert_eq!(r.status, 401, "a revoked key is refused");
    let r = http(api.d.http, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    // The API's documentation is public.
    let r = http(api.d.http, "GET", "/v1/openapi.json", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.json()["paths"]["/v1/verifications"]["post"].is_object());
    // The scheme is case-insensitive (RFC 9110); the key is not.
    let (_, fresh) = keys.create("any case").await.unwrap();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = read_as(format!("{scheme} {fresh}")).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{scheme}"
        );
    }
    let r = read_as(format!("Basic {fresh}")).await;
    assert_eq!(r.status, 401, "another scheme");
    // A verification is visible only to the key that made it.
    let mine = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "owned"}),
            &[],
        )
        .await
        .json();
    let (_, other) = keys.create("other app").await.unwrap();
    let other = format!("Bearer {other}");
    let path = format!("/v1/verifications/{}", mine["id"].as_str().unwrap());
    let r = http(api.d.http, "GET", &path, &[("Authorization", &other)], b"").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    // The very answer of an id that does not exist: another key's ids are not told.
    let none = "/v1/verifications/vf_2222222222222222222222222";
    let missing = http(api.d.http, "GET", none, &[("Authorization", &other)], b"").await;
    assert_eq!((missing.status, &missing.body), (404, &r.body));
    let cancel = format!("{path}/cancel");
    let r = http(
        api.d.http,
        "POST",
        &cancel,
        &[("Authorization", &other)],
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(api.get(&path).await.json()["status"], "pending");
    api.d.stop().await;
}

async fn hostile_bodies_get_clear_errors(db: Db) {
    let api = Api::with(db, |c| {
        c.http.max_body_bytes = 2048;
        c.webhooks.allow_private_callbacks = false;
    })
    .await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "text/plain",
            br#"{"phone":"+14155550101","user_ref":"a"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "application/json",
            b"{not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "application/json",
            b"{\"phone\":\"+1415\xff\xfe\",\"user_ref\":\"a\"}".to_vec(),
            400,
            "invalid_json",
        ),
        ("application/json", b"".to_vec(), 400, "invalid_json"),
        (
            "application/json",
            br#"{"phone":14155550101,"user_ref":"a"}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            "application/json",
            br#"{"user_ref":"a"}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            "application/json",
            br#"{"phone":"+14155550101","user_ref":"a","admin":true}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            "application/json",
            br#"[1,2,3]"#.to_vec(),
            422,
            "invalid_field",
        ),
        // The fields in order, as an array: serde would take it for the object.
        (
            "application/json",
            br#"["+14155550101","a"]"#.to_vec(),
            422,
            "invalid_field",
        ),
        ("application/json", b"[]".to_vec(), 422, "invalid_field"),
        ("application/json", br#""x""#.to_vec(), 422, "invalid_field"),
        // An extension cannot be dialled, and is not dropped quietly.
        (
            "application/json",
            br#"{"phone":"+14155550110x123","user_ref":"a"}"#.to_vec(),
            422,
            "invalid_phone",
        ),
        (
            "application/json",
            br#"{"phone":"123","user_ref":"a"}"#.to_vec(),
            422,
            "invalid_phone",
        ),
        (
            "application/json",
            br#"{"phone":"+442079460000","user_ref":"a"}"#.to_vec(),
            422,
            "invalid_phone",
        ),
        (
            "application/json",
            format!(
                r#"{{"phone":"+14155550101","user_ref":"{}"}}"#,
                "u".repeat(500)
            )
            .into_bytes(),
            422,
            "invalid_user_ref",
        ),
        (
            "application/json",
            br#"{"phone":"+14155550101","user_ref":"a","code_length":3}"#.to_vec(),
            422,
            "invalid_code_length",
        ),
        (
            "application/json",
            br#"{"phone":"+14155550101","user_ref":"a","callback_url":"http://169.254.169.254/latest"}"#.to_vec(),
            422,
            "invalid_callback_url",
        ),
        (
            "application/json",
            br#"{"phone":"+14155550101","user_ref":"a","callback_url":"ftp://x"}"#.to_vec(),
            422,
            "invalid_callback_url",
        ),
        (
            "application/json",
            br#"{"phone":"+14155550101","user_ref":"a","locale":"../../etc"}"#.to_vec(),
            422,
            "invalid_locale",
        ),
        (
            "application/json",
            br#"{"phone":"+14155550101","user_ref":"a","locale":"fr-CA"}"#.to_vec(),
            422,
            "unsupported_locale",
        ),
        (
            "application/json",
            format!(
                r#"{{"phone":"+14155550101","user_ref":"{}"}}"#,
                "u".repeat(100_000)
            )
            .into_bytes(),
            413,
            "payload_too_large",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let r = api.raw_post(content_type, &body).await;
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert_eq!(
            r.status,
            status,
            "{shown}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), code, "{shown}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(!message.is_empty());
        assert!(
            !message.contains("Request"),
            "names an internal type: {message}"
        );
    }
    // A good callback_url, but this daemon has no webhooks.secret to sign its webhooks with:
    // refused now, rather than accepted and never sent.
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "a", "callback_url": "https://hooks.example.com/cv"}),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "invalid_callback_url")
    );
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("webhooks.secret"), "{message}");
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "a"}),
            &[("Idempotency-Key", "")],
        )
        .await;
    assert_eq!(r.error_code(), "invalid_idempotency_key");
    // After all that, a good request still works.
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "fine"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 201);
    api.d.stop().await;
}

async fn idempotency_key_gives_one_verification(db: Db) {
    let api = Api::new(db).await;
    let body = json!({"phone": PHONE, "user_ref": "ivy"});
    let first = api
        .post(
            "/v1/verifications",
            &body,
            &[("Idempotency-Key", "order-77")],
        )
        .await;
    let again = api
        .post(
            "/v1/verifications",
            &body,
            &[("Idempotency-Key", "order-77")],
        )
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(again.status, 201);
    assert_eq!(first.json(), again.json(), "same key, same answer");
    let other = api
        .post(
            "/v1/verifications",
            &body,
            &[("Idempotency-Key", "order-78")],
        )
        .await;
    assert_ne!(other.json()["id"], first.json()["id"]);
    let changed = json!({"phone": PHONE, "user_ref": "someone-else"});
    let r = api
        .post(
            "/v1/verifications",
            &changed,
            &[("Idempotency-Key", "order-77")],
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "idempotency_conflict")
    );
    api.d.stop().await;
}

async fn lockouts_and_rate_limits_are_429(db: Db) {
    let api = Api::with(db, |c| c.verification.max_per_number_per_hour = 2).await;
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "mallory"}),
            &[],
        )
        .await;
    let v = r.json();
    let bad: String = v["code"]
        .as_str()
        .unwrap()
        .chars()
        .map(|c| if c == '1' { '2' } else { '1' })
        .collect();
    Call::verify(v["id"].as_str().unwrap())
        .press("#")
        .press(&bad)
        .press(&bad)
        .press(&bad)
        .run(api.d.addr)
        .await
        .unwrap();
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": "+14155550177", "user_ref": "mallory"}),
            &[],
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "locked_out"));
    assert!(r.json()["error"]["retry_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() > 23 * 3600);

    let second = "+14155550188";
    let first_answer = api
        .post(
            "/v1/verifications",
            &json!({"phone": second, "user_ref": "u1"}),
            &[("Idempotency-Key", "retry-me")],
        )
        .await;
    assert_eq!(first_answer.status, 201);
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": second, "user_ref": "u2"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": second, "user_ref": "u3"}),
            &[],
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    // A retry of the first request is its answer, not a rate limit.
    let again = api
        .post(
            "/v1/verifications",
            &json!({"phone": second, "user_ref": "u1"}),
            &[("Idempotency-Key", "retry-me")],
        )
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.json(), first_answer.json());
    api.d.stop().await;
}

/// Parallel requests for one number (as a busy web app, or several daemons, send them) do
/// not pass the limit together: the check and the insert are one store operation.
async fn parallel_requests_cannot_pass_a_rate_limit_together(db: Db) {
    let d = crate::common::start_with(db, |c| {
        c.verification.max_per_number_per_hour = 3;
        c.database.max_connections = 16;
    })
    .await;
    let created = start_in_parallel(&d, |i| callverify::domain::NewVerification {
        phone: PHONE.into(),
        user_ref: format!("user{i}"),
        ..Default::default()
    })
    .await;
    assert_eq!(created, (3, 21));
    d.stop().await;
}

/// The same for one API key's hourly limit, with every request for another number and user.
async fn parallel_requests_cannot_pass_a_key_limit_together(db: Db) {
    let d = crate::common::start_with(db, |c| {
        c.verification.max_per_api_key_per_hour = 3;
        c.database.max_connections = 16;
    })
    .await;
    let created = start_in_parallel(&d, |i| callverify::domain::NewVerification {
        phone: format!("+1415555{:04}", 1000 + i),
        user_ref: format!("user{i}"),
        api_key_id: Some("key-under-test".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(created, (3, 21));
    d.stop().await;
}

/// Starts 24 verifications at once; how many were created and how many rate limited.
async fn start_in_parallel(
    d: &crate::common::Daemon,
    request: impl Fn(usize) -> callverify::domain::NewVerification,
) -> (usize, usize) {
    let starts = (0..24).map(|i| {
        let service = d.service.clone();
        let new = request(i);
        tokio::spawn(async move { service.start(new).await })
    });
    let results = futures::future::join_all(starts).await;
    let created = results
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    let limited = results
        .iter()
        .filter(|r| {
            matches!(
                r.as_ref().unwrap(),
                Err(callverify::domain::VerifyError::RateLimited { .. })
            )
        })
        .count();
    (created, limited)
}

on_both_backends!(
    parallel_requests_cannot_pass_a_rate_limit_together,
    parallel_requests_cannot_pass_a_key_limit_together,
    create_call_and_read_back,
    cancel_and_not_found,
    authentication_is_required,
    hostile_bodies_get_clear_errors,
    idempotency_key_gives_one_verification,
    lockouts_and_rate_limits_are_429,
);

/// A daemon whose HTTP listener allows `max` connections and 1 s per request and idle wait.
async fn tight_http(max: u64) -> Daemon {
    crate::common::start_with(Db::Sqlite, move |c| {
        c.http.max_connections = max;
        c.http.timeout_secs = 1;
    })
    .await
}

/// Reads until the daemon closes the connection (a hang guard, not a timing target).
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut got))
        .await
        .expect("the daemon closes the connection")
        .ok();
    String::from_utf8_lossy(&got).into_owned()
}

/// Only hosts in `http.allow` are served: another is closed unanswered.
#[tokio::test]
async fn hosts_outside_the_http_allowlist_are_refused() {
    let d = crate::common::start_with(Db::Sqlite, |c| {
        c.http.allow = vec!["127.0.0.1".into()];
    })
    .await;
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((ip, 0).into()).unwrap();
            let mut s = socket.connect(d.http).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .ok();
            read_until_closed(&mut s).await
        }
    };
    let allowed = from("127.0.0.1").await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert_eq!(from("127.0.0.2").await, "", "answered outside http.allow");
    d.stop().await;
}

/// Slow clients hold no connection for long: headers dripping in, an idle kept-alive
/// connection, a body that never comes.
#[tokio::test]
async fn slow_clients_are_timed_out() {
    let d = tight_http(16).await;
    // Headers that never end: closed.
    let mut slow = tokio::net::TcpStream::connect(d.http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut slow).await, "");
    // A kept-alive connection left idle after its answer: closed.
    let mut idle = tokio::net::TcpStream::connect(d.http).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // A body that never arrives (the sign-in form is read before anything is checked): 408.
    let mut dripping = tokio::net::TcpStream::connect(d.http).await.unwrap();
    dripping
        .write_all(
            b"POST /console/login HTTP/1.1\r\nHost: t\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut dripping).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    d.stop().await;
}

/// A client that pipelines requests and never reads the answers holds its place only until
/// the daemon's writes have been stuck for the time limit: then it is cut off, and the next
/// client is served.
#[tokio::test]
async fn clients_that_never_read_are_cut_off() {
    let d = tight_http(1).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stuck = socket.connect(d.http).await.unwrap();
    let (mut never_read, mut requests) = stuck.into_split();
    // 400 answers of 25 KB: about 10 MB, more than the daemon's send buffer (4 MB at most)
    // and this tiny receive buffer hold. Written aside: the daemon stops reading them.
    let writer = tokio::spawn(async move {
        let request = b"GET /v1/openapi.json HTTP/1.1\r\nHost: t\r\n\r\n".repeat(400);
        requests.write_all(&request).await.ok();
        requests
    });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut late = tokio::net::TcpStream::connect(d.http).await.unwrap();
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut late).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The reader that never read was closed by the daemon, not left open.
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        never_read.read_to_end(&mut rest),
    )
    .await
    .expect("the daemon closed the stuck connection")
    .ok();
    writer.abort();
    d.stop().await;
}

/// HTTP connections have a cap of their own: a flood of idle ones waits its turn and never
/// takes a place from calls, which go on being served.
#[tokio::test]
async fn an_http_flood_does_not_touch_calls() {
    let d = tight_http(4).await;
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(tokio::net::TcpStream::connect(d.http).await.unwrap());
    }
    let v = d.new_verification(PHONE, "during-flood").await;
    let t = Call::verify(&v.id)
        .press("#")
        .press(v.code.as_deref().unwrap())
        .run(d.addr)
        .await
        .unwrap();
    assert!(t.closed_by_daemon);
    assert_eq!(
        d.status(&v.id).await.status,
        callverify::domain::Status::Verified
    );
    // The flood times out four at a time; a request behind it is answered in the end.
    let mut late = tokio::net::TcpStream::connect(d.http).await.unwrap();
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        late.read_to_end(&mut answer),
    )
    .await
    .expect("answered once the flood timed out")
    .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    drop(flood);
    d.stop().await;
}
