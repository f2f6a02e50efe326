//! Outage switches for the outage tests (`tests/integration/outages.rs`).
//!
//! A [`Switch`] is a TCP proxy on 127.0.0.1 in front of one dependency (moto, usually): clients
//! are pointed at it instead of the dependency. [`Switch::down`] closes its port and resets every
//! open connection (what a stopped server looks like, while moto keeps its state for the
//! recovery), [`Switch::unavailable`] answers every request `503 ServiceUnavailable`, and
//! [`Switch::up`] forwards again. One switch per AWS service lets a test cut DynamoDB while SQS,
//! S3 and Secrets Manager keep working.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::config::{Credentials, Region, retry::RetryConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a [`Switch`] does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the dependency.
    Up,
    /// The port is closed: connecting is refused.
    Down,
    /// Every request gets `503 ServiceUnavailable` (the AWS error shape of its protocol).
    Unavailable,
}

/// A proxy that can take its dependency away and give it back.
pub struct Switch {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// The accept loop (none while down) and every open connection.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    requests: Arc<std::sync::atomic::AtomicU64>,
}

impl Switch {
    /// A switch in front of `upstream` (`http://127.0.0.1:PORT`), forwarding.
    pub async fn start(upstream: &str) -> Switch {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("{upstream} is not http://IP:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port for the outage switch");
        let addr = listener.local_addr().expect("its address");
        let s = Switch {
            addr,
            upstream,
            mode: Arc::new(Mutex::new(Mode::Up)),
            tasks: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::default(),
        };
        s.serve(listener);
        s
    }

    /// Where clients connect, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.lock().expect("mode")
    }

    /// Requests answered 503 while unavailable (a closed port counts nothing: nothing arrives).
    pub fn refused(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes the port and resets every open connection.
    pub async fn down(&self) {
        self.set(Mode::Down).await;
    }

    /// Answers every request 503 (open connections are reset first).
    pub async fn unavailable(&self) {
        self.set(Mode::Unavailable).await;
    }

    /// Forwards again.
    pub async fn up(&self) {
        self.set(Mode::Up).await;
    }

    /// Switches to `mode`.
    pub async fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
        // Pooled keep-alive connections must not outlive a change: the client reconnects and
        // meets the new mode.
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        if mode == Mode::Down {
            // Give the aborted accept loop a moment to drop its listener.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        // The same port again (a client configured with this URL must find it).
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => return self.serve(l),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot listen on {} again: {last:?}", self.addr);
    }

    fn serve(&self, listener: TcpListener) {
        let (mode, tasks, upstream, refused) = (
            self.mode.clone(),
            self.tasks.clone(),
            self.upstream,
            self.requests.clone(),
        );
        let accept = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let m = *mode.lock().expect("mode");
                    let refused = refused.clone();
                    let conn = tokio::spawn(async move {
                        match m {
                            Mode::Up => forward(client, upstream).await,
                            Mode::Unavailable => {
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                answer_503(client).await
                            }
                            Mode::Down => {
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                reset(client)
                            }
                        }
                    });
                    if let Ok(mut t) = tasks.lock() {
                        t.retain(|h| !h.is_finished());
                        t.push(conn);
                    }
                }
            }
        });
        self.tasks.lock().expect("tasks").push(accept);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

/// Reads one request and answers 503 in the error shape of its protocol: JSON for the
/// `X-Amz-Target` protocols (DynamoDB, SQS, Secrets Manager), XML for S3.
async fn answer_503(mut client: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let Ok(n) = client.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    // Read the body so the client is not reset mid-send.
    while buf.len() < head_end + length {
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (content_type, body) = if head.contains("x-amz-target:") {
        (
            "application/x-amz-json-1.0",
            r#"{"__type":"ServiceUnavailableException","message":"injected outage"}"#.to_owned(),
        )
    } else {
        (
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code>\
             <Message>injected outage</Message><RequestId>outage</RequestId></Error>"
                .to_owned(),
        )
    };
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {content_type}\r\n\
         x-amzn-errortype: ServiceUnavailableException\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(resp.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// An AWS SDK configuration for a local endpoint (a [`Switch`] or moto): us-east-1, dummy
/// credentials, two attempts 50 ms apart, so an outage answers within a second.
pub async fn sdk_config_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "spbridge-tests",
        ))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .endpoint_url(endpoint)
        .load()
        .await
}

/// One switch per AWS service, all in front of the same moto.
pub struct AwsSwitches {
    /// Secrets Manager.
    pub secrets: Switch,
    /// DynamoDB (the jobs table).
    pub dynamo: Switch,
    /// SQS (the job queue).
    pub sqs: Switch,
    /// S3 (the staging bucket).
    pub s3: Switch,
}

impl AwsSwitches {
    /// Four forwarding switches in front of `moto_url`.
    pub async fn start(moto_url: &str) -> AwsSwitches {
        AwsSwitches {
            secrets: Switch::start(moto_url).await,
            dynamo: Switch::start(moto_url).await,
            sqs: Switch::start(moto_url).await,
            s3: Switch::start(moto_url).await,
        }
    }

    /// The production adapters for `infra`'s table, queue and bucket, and the secret store, each
    /// through its own switch.
    pub async fn adapters(&self, infra: &crate::JobsInfra) -> Adapters {
        let dynamo = sdk_config_at(&self.dynamo.url()).await;
        let sqs = sdk_config_at(&self.sqs.url()).await;
        let s3 = sdk_config_at(&self.s3.url()).await;
        let secrets = sdk_config_at(&self.secrets.url()).await;
        Adapters {
            jobs: shared::jobs::DynamoJobStore::new(
                aws_sdk_dynamodb::Client::new(&dynamo),
                &infra.table,
                shared::jobs::DEFAULT_RETENTION,
            ),
            queue: shared::jobs::queue::SqsQueue::new(
                aws_sdk_sqs::Client::new(&sqs),
                &infra.queue_url,
            ),
            staging: shared::jobs::staging::S3Staging::new(crate::s3_client(&s3), &infra.bucket),
            store: shared::secrets::AwsSecretStore::new(&secrets),
            sqs: aws_sdk_sqs::Client::new(&sqs),
        }
    }
}

/// Adapters whose every request passes a [`Switch`].
pub struct Adapters {
    /// The jobs table.
    pub jobs: shared::jobs::DynamoJobStore,
    /// The job queue.
    pub queue: shared::jobs::queue::SqsQueue,
    /// The staging bucket.
    pub staging: shared::jobs::staging::S3Staging,
    /// The secret store.
    pub store: shared::secrets::AwsSecretStore,
    /// A plain SQS client (what Lambda's event source mapping polls with).
    pub sqs: aws_sdk_sqs::Client,
}
