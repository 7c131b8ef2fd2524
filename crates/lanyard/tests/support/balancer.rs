//! A layer-4 load balancer for scale-out tests: TCP connections to its address are passed,
//! bytes untouched (TLS ends at the servers), to one of several `lanyard serve` processes, the
//! way a TCP load balancer in front of a deployment does. A backend that refuses the
//! connection is skipped, as a health-checked balancer skips a dead server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Where new connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Only this backend (by index).
    Only(usize),
    /// Each new connection to the next backend in turn.
    RoundRobin,
}

struct State {
    backends: Vec<SocketAddr>,
    route: Route,
    next: usize,
    open: Vec<JoinHandle<()>>,
    /// Connections passed to each backend so far.
    passed: Vec<Arc<std::sync::atomic::AtomicUsize>>,
}

pub struct Balancer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
        for t in self.state.lock().unwrap().open.drain(..) {
            t.abort();
        }
    }
}

impl Balancer {
    /// Listens on a free local port; backends are set later with [`Balancer::set_backends`].
    pub async fn start() -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            backends: Vec::new(),
            route: Route::RoundRobin,
            next: 0,
            open: Vec::new(),
            passed: Vec::new(),
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let order = {
                    let mut s = st.lock().unwrap();
                    let n = s.backends.len();
                    let order: Vec<(SocketAddr, Arc<std::sync::atomic::AtomicUsize>)> =
                        match s.route {
                            Route::Only(i) if i < n => vec![(s.backends[i], s.passed[i].clone())],
                            Route::Only(_) => Vec::new(),
                            Route::RoundRobin => (0..n)
                                .map(|k| {
                                    let i = (s.next + k) % n;
                                    (s.backends[i], s.passed[i].clone())
                                })
                                .collect(),
                        };
                    s.next = s.next.wrapping_add(1);
                    order
                };
                let handle = tokio::spawn(pass(client, order));
                let mut s = st.lock().unwrap();
                s.open.retain(|t| !t.is_finished());
                s.open.push(handle);
            }
        });
        Balancer { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        let mut s = self.state.lock().unwrap();
        s.passed = backends.iter().map(|_| Default::default()).collect();
        s.backends = backends;
    }

    /// How many connections each backend was given so far.
    pub fn passed(&self) -> Vec<usize> {
        let s = self.state.lock().unwrap();
        s.passed
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }

    /// Routes new connections as `route` says and closes every open one, so that clients
    /// holding kept-alive connections reconnect through the new route.
    pub fn route(&self, route: Route) {
        let mut s = self.state.lock().unwrap();
        s.route = route;
        for t in s.open.drain(..) {
            t.abort();
        }
    }
}

async fn pass(
    mut client: TcpStream,
    order: Vec<(SocketAddr, Arc<std::sync::atomic::AtomicUsize>)>,
) {
    for (backend, passed) in order {
        if let Ok(mut server) = TcpStream::connect(backend).await {
            passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            return;
        }
    }
}

/// The socket address of a server's `https://host:port` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}
