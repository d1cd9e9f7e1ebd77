use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use testkit::{SECRET, TestBroker, events, now_secs, svix_headers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_finishes_the_request_in_flight_and_exits_0() {
    let broker = TestBroker::new().await;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingress"))
        .env_clear()
        .envs(broker.settings())
        .env("CLERK_WEBHOOK_SECRET", SECRET)
        .env("INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready_url = format!("http://127.0.0.1:{port}/readyz");
    testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
        let r = reqwest::get(&ready_url).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let body = events::user_deleted("user_sigterm", 1);
    let headers = svix_headers(SECRET, "msg_sigterm", now_secs(), &body);

    // A request whose body is only half sent when SIGTERM arrives.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(testkit::process::send(
        child.id(),
        testkit::process::Signal::Term
    ));

    // No new connections are served (once the signal is handled)...
    let refused =
        || match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
        {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
                let mut buf = [0u8; 64];
                matches!(s.read(&mut buf), Ok(0) | Err(_))
            }
        };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !refused() {
        assert!(
            std::time::Instant::now() < deadline,
            "a new connection was served after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...but the request in flight completes, with its confirm.
    stream.write_all(&body[10..]).unwrap();
    let mut response = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    response.push_str(&String::from_utf8_lossy(&buf[..n]));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ingress did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert_eq!(broker.count(&broker.topology.main_queue()).await, 1);
    // A clean stop logs no error (lapin used to report the channels' close racing the
    // connection's as "ERROR Connection error").
    let log = testkit::child_output(&mut child);
    assert!(log.contains("ingress stopped"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    // Written to a pipe, not a terminal: plain lines without colour codes.
    assert!(!log.contains('\u{1b}'), "{log:?}");
}
