//! The instance metadata endpoint ([`MetadataEndpoint`]) as the virtio-net device's
//! [`FrameInterceptor`]: frames for 169.254.169.254 are answered inside amivm, on the device
//! thread, with the wall clock ([`Instant::now`]) as the endpoint's time.

use super::devices::virtio::net::FrameInterceptor;
use crate::net::imds::{MetadataConfig, MetadataEndpoint};
use std::time::{Duration, Instant};

/// The metadata service plugged into the network device.
pub struct MetadataInterceptor {
    endpoint: MetadataEndpoint,
}

impl MetadataInterceptor {
    /// A service for `config`, sending to the NIC `guest_mac` until the guest's frames say
    /// otherwise.
    pub fn new(config: MetadataConfig, guest_mac: [u8; 6]) -> MetadataInterceptor {
        MetadataInterceptor {
            endpoint: MetadataEndpoint::new(config, Some(guest_mac)),
        }
    }

    /// Wrap an endpoint built elsewhere (tests with a fixed key and clock origin).
    pub fn from_endpoint(endpoint: MetadataEndpoint) -> MetadataInterceptor {
        MetadataInterceptor { endpoint }
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> crate::net::imds::Stats {
        self.endpoint.stats()
    }
}

impl FrameInterceptor for MetadataInterceptor {
    fn accepts(&self, frame: &[u8]) -> bool {
        MetadataEndpoint::accepts(frame)
    }

    fn receive(&mut self, frame: &[u8]) {
        self.endpoint.receive(Instant::now(), frame);
    }

    fn transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        self.endpoint.transmit(Instant::now(), out)
    }

    fn poll_at(&self) -> Option<Duration> {
        self.endpoint.poll_at(Instant::now())
    }
}
