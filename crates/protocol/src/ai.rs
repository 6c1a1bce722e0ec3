//! AI challenges, solutions and verdicts: signed messages, and the verifier seam.
//!
//! A [`Challenge`] is issued (signed) by a node and travels to `ai-compute` peers within a hop
//! budget. A solver answers with a signed [`Solution`]; validators check it with a
//! [`SolutionVerifier`] and gossip a signed [`Verdict`]. PlayerGold's real AI tasks plug in behind
//! [`SolutionVerifier`]; devnets ship [`HashPuzzle`], a task anyone can check cheaply.

use playergold_primitives::{Hash32, Keypair, PublicKey, Signature, SignatureError, TimestampMs};
use serde::{Deserialize, Serialize};

/// Largest task payload or solution result, in bytes. Real AI tasks carry a reference to their
/// data, not the data itself; 16 KiB is ample for a seed, a model id and parameters.
pub const MAX_TASK_BYTES: usize = 16 * 1024;

const CHALLENGE_DOMAIN: &[u8] = b"playergold/challenge/v1";
const SOLUTION_DOMAIN: &[u8] = b"playergold/solution/v1";
const VERDICT_DOMAIN: &[u8] = b"playergold/verdict/v1";

fn digest(domain: &[u8], value: &impl Serialize) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(domain);
    h.update(&playergold_primitives::codec::encode(value));
    Hash32(*h.finalize().as_bytes())
}

/// Identifies a challenge: hash of its signed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChallengeId(pub Hash32);

/// Identifies a solution: hash of its signed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SolutionId(pub Hash32);

/// The signed part of a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeBody {
    /// Who issued it.
    pub issuer: PublicKey,
    /// Issuer-chosen number making the challenge unique.
    pub nonce: u64,
    /// The task, interpreted by the verifier of `kind`.
    pub task: Vec<u8>,
    /// Task kind: which verifier checks solutions.
    pub kind: u16,
    /// Solutions after this time are void.
    pub deadline_ms: TimestampMs,
}

/// A signed challenge with its remaining hop budget (not signed: each hop decrements it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Signed fields.
    pub body: ChallengeBody,
    /// Issuer's signature over the id.
    pub signature: Signature,
    /// How many more hops it may travel.
    pub hops_left: u8,
}

impl Challenge {
    /// Signs a new challenge.
    pub fn new(
        issuer: &Keypair,
        nonce: u64,
        kind: u16,
        task: Vec<u8>,
        deadline_ms: TimestampMs,
        max_hops: u8,
    ) -> Challenge {
        let body = ChallengeBody {
            issuer: issuer.public(),
            nonce,
            task,
            kind,
            deadline_ms,
        };
        let id = ChallengeId(digest(CHALLENGE_DOMAIN, &body));
        Challenge {
            signature: issuer.sign(&id.0.0),
            body,
            hops_left: max_hops,
        }
    }

    /// The challenge id.
    pub fn id(&self) -> ChallengeId {
        ChallengeId(digest(CHALLENGE_DOMAIN, &self.body))
    }

    /// Checks the issuer's signature and the payload size.
    pub fn verify(&self) -> Result<(), SignatureError> {
        if self.body.task.len() > MAX_TASK_BYTES {
            return Err(SignatureError::Invalid);
        }
        self.body.issuer.verify(&self.id().0.0, &self.signature)
    }
}

/// The signed part of a solution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SolutionBody {
    /// The challenge solved.
    pub challenge: ChallengeId,
    /// The solver.
    pub solver: PublicKey,
    /// The answer, interpreted by the verifier.
    pub result: Vec<u8>,
}

/// A signed solution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Solution {
    /// Signed fields.
    pub body: SolutionBody,
    /// Solver's signature over the id.
    pub signature: Signature,
}

impl Solution {
    /// Signs a solution.
    pub fn new(solver: &Keypair, challenge: ChallengeId, result: Vec<u8>) -> Solution {
        let body = SolutionBody {
            challenge,
            solver: solver.public(),
            result,
        };
        let id = SolutionId(digest(SOLUTION_DOMAIN, &body));
        Solution {
            signature: solver.sign(&id.0.0),
            body,
        }
    }

    /// The solution id.
    pub fn id(&self) -> SolutionId {
        SolutionId(digest(SOLUTION_DOMAIN, &self.body))
    }

    /// Checks the solver's signature and the result size.
    pub fn verify(&self) -> Result<(), SignatureError> {
        if self.body.result.len() > MAX_TASK_BYTES {
            return Err(SignatureError::Invalid);
        }
        self.body.solver.verify(&self.id().0.0, &self.signature)
    }
}

/// The signed part of a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictBody {
    /// The challenge.
    pub challenge: ChallengeId,
    /// The solution judged.
    pub solution: SolutionId,
    /// The solver (whose reputation the verdict feeds).
    pub solver: PublicKey,
    /// The validator.
    pub validator: PublicKey,
    /// Whether the solution is correct.
    pub valid: bool,
}

/// A validator's signed judgement of a solution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Signed fields.
    pub body: VerdictBody,
    /// Validator's signature.
    pub signature: Signature,
}

impl Verdict {
    /// Signs a verdict on `solution`.
    pub fn new(validator: &Keypair, solution: &Solution, valid: bool) -> Verdict {
        let body = VerdictBody {
            challenge: solution.body.challenge,
            solution: solution.id(),
            solver: solution.body.solver,
            validator: validator.public(),
            valid,
        };
        let id = digest(VERDICT_DOMAIN, &body);
        Verdict {
            signature: validator.sign(&id.0),
            body,
        }
    }

    /// The verdict id (also its dedup key).
    pub fn id(&self) -> Hash32 {
        digest(VERDICT_DOMAIN, &self.body)
    }

    /// Checks the validator's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.body.validator.verify(&self.id().0, &self.signature)
    }
}

/// Checks solutions of one task kind. PlayerGold's proof-of-AI tasks implement this.
pub trait SolutionVerifier: Send + Sync {
    /// The task kind this verifier handles.
    fn kind(&self) -> u16;
    /// Whether `solution` correctly answers `challenge`.
    fn verify(&self, challenge: &Challenge, solution: &Solution) -> bool;
    /// Computes a solution (for solvers); `None` if this node cannot.
    fn solve(&self, challenge: &Challenge) -> Option<Vec<u8>>;
}

/// The devnet task: find a nonce such that blake3(challenge id ‖ nonce) starts with `difficulty`
/// zero bits. The task payload is one byte, the difficulty (capped at [`HashPuzzle::MAX_BITS`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HashPuzzle;

impl HashPuzzle {
    /// Task kind number.
    pub const KIND: u16 = 1;
    /// Hardest difficulty accepted: 2^24 hashes on average, about a second on one core.
    pub const MAX_BITS: u8 = 24;

    fn leading_zero_bits(h: &[u8; 32]) -> u32 {
        let mut bits = 0;
        for b in h {
            if *b == 0 {
                bits += 8;
            } else {
                bits += b.leading_zeros();
                break;
            }
        }
        bits
    }

    fn check(id: &ChallengeId, nonce: u64, difficulty: u8) -> bool {
        let mut h = blake3::Hasher::new();
        h.update(&id.0.0);
        h.update(&nonce.to_le_bytes());
        Self::leading_zero_bits(h.finalize().as_bytes()) >= u32::from(difficulty)
    }

    fn difficulty(challenge: &Challenge) -> Option<u8> {
        match challenge.body.task.as_slice() {
            [d] if *d <= Self::MAX_BITS => Some(*d),
            _ => None,
        }
    }
}

impl SolutionVerifier for HashPuzzle {
    fn kind(&self) -> u16 {
        Self::KIND
    }

    fn verify(&self, challenge: &Challenge, solution: &Solution) -> bool {
        let Some(difficulty) = Self::difficulty(challenge) else {
            return false;
        };
        let Ok(nonce) = <[u8; 8]>::try_from(solution.body.result.as_slice()) else {
            return false;
        };
        solution.body.challenge == challenge.id()
            && Self::check(&challenge.id(), u64::from_le_bytes(nonce), difficulty)
    }

    fn solve(&self, challenge: &Challenge) -> Option<Vec<u8>> {
        let difficulty = Self::difficulty(challenge)?;
        let id = challenge.id();
        (0..u64::MAX)
            .find(|n| Self::check(&id, *n, difficulty))
            .map(|n| n.to_le_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puzzle_round_trip_and_signatures() {
        let issuer = Keypair::from_secret(&[1; 32]);
        let solver = Keypair::from_secret(&[2; 32]);
        let c = Challenge::new(&issuer, 7, HashPuzzle::KIND, vec![8], TimestampMs(10), 3);
        assert!(c.verify().is_ok());
        let result = HashPuzzle.solve(&c).expect("solvable");
        let s = Solution::new(&solver, c.id(), result);
        assert!(s.verify().is_ok());
        assert!(HashPuzzle.verify(&c, &s));
        let wrong = Solution::new(&solver, c.id(), 0u64.to_le_bytes().to_vec());
        // Nonce 0 may be right by luck (1 in 256); look for one that is wrong.
        let wrong = if HashPuzzle.verify(&c, &wrong) {
            Solution::new(&solver, c.id(), 1u64.to_le_bytes().to_vec())
        } else {
            wrong
        };
        assert!(!HashPuzzle.verify(&c, &wrong) || HashPuzzle.verify(&c, &s));
        let v = Verdict::new(&issuer, &s, true);
        assert!(v.verify().is_ok());
        let mut forged = c.clone();
        forged.body.nonce = 8;
        assert!(forged.verify().is_err());
        // The hop budget is not signed: changing it keeps the signature valid.
        let mut hopped = c;
        hopped.hops_left = 1;
        assert!(hopped.verify().is_ok());
    }
}
