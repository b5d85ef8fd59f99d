"""Model, loss and the Accelerate training loop: plain torch, no Prefect imports."""
