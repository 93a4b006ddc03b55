//! Vald v1 wire types and gRPC services, generated at build time from `proto/` (written for
//! wire compatibility with Vald v1.8: same packages, service names and field numbers).
//! Module paths mirror the proto packages, except `core.v1`, which is `agent::v1` here so it
//! does not shadow Rust's `core`.

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod payload {
    pub mod v1 {
        tonic::include_proto!("payload.v1");
    }
}

pub mod vald {
    pub mod v1 {
        tonic::include_proto!("vald.v1");
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("core.v1");
    }
}

pub mod filter {
    pub mod ingress {
        pub mod v1 {
            tonic::include_proto!("filter.ingress.v1");
        }
    }
    pub mod egress {
        pub mod v1 {
            tonic::include_proto!("filter.egress.v1");
        }
    }
}
