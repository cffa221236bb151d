# proconsul's image: the package on python:3.11-slim, run as an unprivileged user.
# docker-compose.yml builds it; alone: docker build -t proconsul . && docker run -p 8500:8500 proconsul
FROM python:3.11-slim

RUN useradd --system --create-home --uid 10001 proconsul \
 && mkdir /data \
 && chown proconsul:proconsul /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY agent ./agent
COPY dns ./dns
COPY api ./api
RUN pip install --no-cache-dir . && rm -rf /src

USER proconsul
WORKDIR /home/proconsul
# /data is where named volumes mount: it belongs to the proconsul user, so a fresh volume does too.
VOLUME ["/data"]
EXPOSE 8500 8600 8600/udp 8300 8305
CMD ["proconsul", "agent", "-dev", "-client", "0.0.0.0"]
