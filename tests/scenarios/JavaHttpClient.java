// java.net.http.HttpClient (JDK 11+): N sequential GETs on one client, HTTP/1.1 keep-alive.
// Prints {"pid": N} and DONE, then stays alive (its pooled connection open) until stdin closes.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class JavaHttpClient {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        int n = Integer.parseInt(args[1]);
        for (int i = 0; i < n; i++) {
            HttpResponse<String> r = client.send(
                HttpRequest.newBuilder(URI.create(args[0])).build(), HttpResponse.BodyHandlers.ofString());
            if (r.statusCode() != 200) {
                throw new RuntimeException("HTTP " + r.statusCode());
            }
        }
        System.out.println("{\"pid\": " + ProcessHandle.current().pid() + "}");
        System.out.println("DONE");
        System.out.flush();
        while (System.in.read() != -1) {
        }
    }
}
