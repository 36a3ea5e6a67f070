"""Generation backends: the policy's samples from vLLM, one kind per mode (`backends`: in process, servers the job
starts, servers given by URL), the generators they start (`engine` in process, `server` on servers, with the
servers the job starts in `serving`), and the sampling calls both share (`sampling`). Tied to vLLM's version;
the round's stages never import this package, only the `Generator` role of `onpolicy.interfaces`, and it imports
nothing of `onpolicy.train` (the learner)."""
