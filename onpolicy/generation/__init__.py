"""Generation backends: the policy's samples from vLLM, in process (`engine`) or on servers (`server`, with the
servers the job starts in `serving`), and the sampling calls both share (`sampling`). Tied to vLLM's version;
the round's stages never import this package, only the `Generator` role of `onpolicy.interfaces`."""
