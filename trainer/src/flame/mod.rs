//! FLAME's building blocks (DESIGN §5) that do not depend on the training loop:
//! the interpolation posterior the Q-reweighted targets sample from ([`posterior`]) and
//! the decoupled entropy estimator ([`entropy`]). The exact JVP through the policy MLP
//! lives with the network (`policy_net::FlowPolicyNet::forward_with_tangent`).

pub mod entropy;
pub mod posterior;
