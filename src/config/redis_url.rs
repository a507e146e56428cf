//! `REDIS_URL`: which Redis the server talks to, one server or the seed nodes of a cluster.
//! Parsed here, where the setting is validated; the cache layer connects to the result.

/// Where Redis is: one server, or the seed nodes of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// A `REDIS_URL` the server cannot use.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum RedisUrlError {
    #[error("REDIS_URL must start with redis://, rediss:// or redis-cluster:// (got '{0}')")]
    Scheme(String),
    #[error("redis-cluster:// needs at least one host:port")]
    NoClusterNodes,
}

impl RedisTarget {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`) is one server;
    /// `redis-cluster://h1:p1,h2:p2` names the seed nodes of a cluster.
    pub fn parse(url: &str) -> Result<RedisTarget, RedisUrlError> {
        if let Some(rest) = url.strip_prefix("redis-cluster://") {
            let nodes: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{}", n.trim_end_matches('/')))
                .collect();
            if nodes.is_empty() {
                return Err(RedisUrlError::NoClusterNodes);
            }
            Ok(RedisTarget::Cluster(nodes))
        } else if url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
        {
            Ok(RedisTarget::Single(url.to_string()))
        } else {
            Err(RedisUrlError::Scheme(url.to_string()))
        }
    }

    /// A plain URL for a single-node connection (pub/sub needs one node, any node of a cluster).
    pub fn any_node(&self) -> &str {
        match self {
            RedisTarget::Single(u) => u,
            RedisTarget::Cluster(nodes) => &nodes[0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/0"),
            Ok(RedisTarget::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            RedisTarget::parse("redis-cluster://127.0.0.1:7000,127.0.0.1:7001"),
            Ok(RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            RedisTarget::parse("http://x"),
            Err(RedisUrlError::Scheme("http://x".into()))
        );
        assert_eq!(
            RedisTarget::parse("redis-cluster://"),
            Err(RedisUrlError::NoClusterNodes)
        );
    }
}
