FROM python:3.11-slim
WORKDIR /app
# CPU torch by default; the GPU worker's image (docker-compose.yml, worker-gpu) is built with
# TORCH_INDEX_URL pointing at a CUDA build of the same torch
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX_URL}
COPY pyproject.toml alembic.ini README.md ./
COPY backend backend
COPY worker worker
COPY migrations migrations
COPY frontend frontend
# editable: alembic.ini, migrations/ and frontend/ are found beside the code
RUN pip install --no-cache-dir -e . && pip install --no-cache-dir --no-deps zennit==0.5.1
ENV XAL_DATA_DIR=/data
EXPOSE 8000
CMD ["xal", "serve", "--no-worker", "--host", "0.0.0.0"]
