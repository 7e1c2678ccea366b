/*
 * torch-mme: a model's server process, asked of torch-mme's template by MMS's Java directly.
 */
package com.amazonaws.ml.mms.wlm;

import java.io.Closeable;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedByInterruptException;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The {@link Process} {@link WorkerLifeCycle} watches for a model's server when the template forked it.
 *
 * <p>The protocol is the launcher's (torch_mme/runtime/launcher.py, template.py): a length-prefixed JSON
 * request {@code {"argv", "env", "cwd"}} on the template's Unix socket, answered {@code pid <n>} and, when the
 * template reaps the server, {@code exit <status>}; closing the connection makes the template kill the
 * server's process group. Java cannot pass its own descriptors over the socket as the launcher does, so
 * the request says {@code "streams": "fifo"}: the template makes two FIFOs beside its socket, which the
 * server writes to, and answers {@code pid <n> <name>}; Java opens {@code streams/<name>-stdout} and
 * {@code -stderr} for reading (the template holds each open meanwhile, so this never waits) and writes
 * {@code opened}, and the template removes them. Java reads them as it reads a process's pipes, to the
 * end, which comes when the server and its workers have exited.
 *
 * <p>{@link #start} returns null when the template cannot be asked (not configured, not running, no answer
 * within {@link #ANSWER_TIMEOUT_MS}, an odd answer): MMS's {@code Runtime.exec} then runs as it always did.
 */
final class TemplateProcess extends Process {

    static final String SOCKET_ENV = "TORCH_MME_TEMPLATE_SOCKET";
    /** The exit status of a server destroyed from here, or whose connection failed: killed (128 + SIGKILL). */
    static final int KILLED = 137;
    /** How long the template has to answer; then the connection is closed and MMS starts the process. */
    static final long ANSWER_TIMEOUT_MS = 30_000;

    private static final Logger logger = LoggerFactory.getLogger(TemplateProcess.class);
    private static final int MAX_LINE = 8192;
    private static final ScheduledExecutorService TIMER =
            Executors.newSingleThreadScheduledExecutor(
                    r -> {
                        Thread thread = new Thread(r, "torch-mme-template-timeout");
                        thread.setDaemon(true);
                        return thread;
                    });

    private final SocketChannel control;
    private final long pid;
    private final InputStream out;
    private final InputStream err;
    private final Object lock = new Object();
    private Integer exitCode; // guarded by lock
    private boolean destroyed; // guarded by lock
    private boolean waiting; // guarded by lock: one thread reads the connection, others wait for it

    private TemplateProcess(SocketChannel control, long pid, InputStream out, InputStream err) {
        this.control = control;
        this.pid = pid;
        this.out = out;
        this.err = err;
    }

    /**
     * The model's server forked by the template for MMS's command line {@code args} (its Python, then the
     * worker script and arguments), {@code envp} and {@code cwd}; null when the template cannot be asked.
     */
    static Process start(String[] args, String[] envp, File cwd) throws InterruptedException {
        String path = System.getenv(SOCKET_ENV);
        if (path == null || path.isEmpty() || args.length < 2) {
            return null;
        }
        SocketChannel channel = null;
        InputStream out = null;
        InputStream err = null;
        ScheduledFuture<?> timeout = null;
        try {
            channel = SocketChannel.open(StandardProtocolFamily.UNIX);
            SocketChannel connection = channel;
            timeout = TIMER.schedule(() -> close(connection), ANSWER_TIMEOUT_MS, TimeUnit.MILLISECONDS);
            channel.connect(UnixDomainSocketAddress.of(path));
            byte[] request = request(args, envp, cwd).getBytes(StandardCharsets.UTF_8);
            ByteBuffer buffer = ByteBuffer.allocate(4 + request.length);
            buffer.putInt(request.length).put(request).flip();
            while (buffer.hasRemaining()) {
                channel.write(buffer);
            }
            String line = readLine(channel);
            String[] answer = line == null ? new String[0] : line.split(" ");
            if (answer.length != 3 || !"pid".equals(answer[0]) || !answer[2].matches("[0-9a-f]{1,64}")) {
                throw new IOException("unexpected answer " + line);
            }
            long pid = Long.parseLong(answer[1]);
            Path streams = Paths.get(path).toAbsolutePath().getParent().resolve("streams");
            out = new FileInputStream(streams.resolve(answer[2] + "-stdout").toFile());
            err = new FileInputStream(streams.resolve(answer[2] + "-stderr").toFile());
            ByteBuffer opened = ByteBuffer.wrap("opened\n".getBytes(StandardCharsets.US_ASCII));
            while (opened.hasRemaining()) {
                channel.write(opened);
            }
            if (!timeout.cancel(false)) { // the timer has closed the connection, or is closing it now
                throw new IOException("no answer within " + ANSWER_TIMEOUT_MS + " ms");
            }
            return new TemplateProcess(channel, pid, out, err);
        } catch (ClosedByInterruptException e) {
            close(out);
            close(err);
            throw new InterruptedException("interrupted asking the template for a model's server");
        } catch (IOException | RuntimeException e) {
            logger.warn("torch-mme template at {} unavailable ({}); starting the model's process", path, e.toString());
            close(out);
            close(err);
            close(channel);
            return null;
        } finally {
            if (timeout != null) {
                timeout.cancel(false);
            }
        }
    }

    private static void close(Closeable closeable) {
        if (closeable != null) {
            try {
                closeable.close();
            } catch (IOException ignored) {
                // closed already; the template kills what it forked for a closed connection
            }
        }
    }

    /** The request as the launcher writes it, without descriptors: argv from the worker script on. */
    static String request(String[] args, String[] envp, File cwd) {
        StringBuilder json = new StringBuilder("{\"argv\": [");
        for (int i = 1; i < args.length; ++i) {
            json.append(i > 1 ? ", " : "").append(string(args[i]));
        }
        json.append("], \"env\": {");
        boolean first = true;
        for (String entry : envp) {
            int equals = entry.indexOf('=');
            if (equals <= 0) {
                continue;
            }
            json.append(first ? "" : ", ").append(string(entry.substring(0, equals)));
            json.append(": ").append(string(entry.substring(equals + 1)));
            first = false;
        }
        json.append("}, \"cwd\": ").append(string(cwd.getAbsolutePath()));
        return json.append(", \"streams\": \"fifo\"}").toString();
    }

    /** A JSON string: quotes, backslashes and control characters escaped. */
    static String string(String text) {
        StringBuilder json = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); ++i) {
            char ch = text.charAt(i);
            if (ch == '"' || ch == '\\') {
                json.append('\\').append(ch);
            } else if (ch < 0x20 || ch == 0x7f) {
                json.append(String.format("\\u%04x", (int) ch));
            } else {
                json.append(ch);
            }
        }
        return json.append('"').toString();
    }

    /** One line from the template (without its newline), read a byte at a time; null at the end. */
    private static String readLine(SocketChannel channel) throws IOException {
        ByteBuffer one = ByteBuffer.allocate(1);
        StringBuilder line = new StringBuilder();
        while (line.length() < MAX_LINE) {
            one.clear();
            if (channel.read(one) < 0) {
                return null;
            }
            char ch = (char) (one.get(0) & 0xff);
            if (ch == '\n') {
                return line.toString();
            }
            line.append(ch);
        }
        throw new IOException("line too long");
    }

    /** The server's exit status, read from the connection: {@code exit <n>}, or KILLED when it ends first. */
    private int readExit() throws InterruptedException {
        try {
            String line;
            while ((line = readLine(control)) != null) {
                String[] words = line.split(" ");
                if (words.length == 2 && "exit".equals(words[0])) {
                    return Integer.parseInt(words[1]);
                }
            }
            return 1; // the template went away first (as the launcher's waiter exits)
        } catch (ClosedByInterruptException e) {
            throw new InterruptedException("interrupted waiting for " + pid); // the connection closed: killed
        } catch (IOException | NumberFormatException e) {
            return KILLED;
        }
    }

    @Override
    public int waitFor() throws InterruptedException {
        synchronized (lock) {
            while (exitCode == null && waiting) {
                lock.wait();
            }
            if (exitCode != null) {
                return exitCode;
            }
            waiting = true;
        }
        Integer code = null;
        try {
            code = readExit();
        } finally {
            synchronized (lock) {
                waiting = false;
                if (code != null && exitCode == null) {
                    exitCode = code;
                }
                lock.notifyAll();
            }
        }
        return exitCode;
    }

    @Override
    public boolean isAlive() {
        synchronized (lock) {
            return exitCode == null && !destroyed;
        }
    }

    @Override
    public int exitValue() {
        synchronized (lock) {
            if (exitCode != null) {
                return exitCode;
            }
            if (destroyed) {
                return KILLED;
            }
        }
        throw new IllegalThreadStateException("process " + pid + " has not exited");
    }

    /** Closes the connection: the template kills the server's process group, as for a launcher killed. */
    @Override
    public void destroy() {
        synchronized (lock) {
            destroyed = true;
        }
        try {
            control.close();
        } catch (IOException ignored) {
            // closed already
        }
    }

    @Override
    public Process destroyForcibly() {
        destroy();
        return this;
    }

    @Override
    public long pid() {
        return pid;
    }

    @Override
    public InputStream getInputStream() {
        return out;
    }

    @Override
    public InputStream getErrorStream() {
        return err;
    }

    @Override
    public OutputStream getOutputStream() {
        return OutputStream.nullOutputStream();
    }
}
